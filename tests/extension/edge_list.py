"""An export format added from outside the package: a circuit's edges as a tab-separated edge list, with one
entry in ``featurecircuits.export.FORMATS`` (then ``featurecircuits export --format edge-list`` writes it)."""

from pathlib import Path

from featurecircuits.fileio import atomic_write_text


def export(circuit, out, **options) -> Path:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["source\ttarget\tweight"] + [f"{u}\t{v}\t{w!r}" for u, v, w in circuit.edges]
    path = folder / "edges.tsv"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
