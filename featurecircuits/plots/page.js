const FC_ENT = {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'};
function fcEsc(s){ return String(s).replace(/[&<>"']/g, c => FC_ENT[c]); }
function fcWire(div, sec){
  const fc = (div.layout.meta || {}).featurecircuits; if(!fc) return;
  const nb = fc.buckets.length, E = fc.edges, ids = fc.ids;
  const slider = sec.querySelector('.edges'), label = sec.querySelector('.edgelabel');
  const panel = sec.querySelector('.panel'), reset = sec.querySelector('.reset');
  let k = fc.shown, sel = null, dimmed = false;
  slider.max = E.length; slider.value = k;
  function bucket(w){
    const r = Math.abs(w) / fc.weight_scale;
    for(let i = 0; i < nb; i++){ if(r < fc.buckets[i]) return i; }
    return nb - 1;
  }
  function redraw(labelOnly){
    const xs=[], ys=[]; for(let b=0;b<2*nb;b++){xs.push([]); ys.push([]);}
    let n=0;
    for(let i=0;i<E.length;i++){
      const e=E[i];
      if(sel===null ? i>=k : (e[0]!==sel && e[1]!==sel)) continue;
      const b=(e[2]>=0?0:nb)+bucket(e[2]);
      xs[b].push(fc.x[e[0]], fc.x[e[1]], null); ys[b].push(fc.y[e[0]], fc.y[e[1]], null); n++;
    }
    if(!labelOnly) Plotly.restyle(div, {x: xs, y: ys}, fc.edge_traces);
    let op = null;
    if(sel!==null){
      const near = new Set([sel]); for(const e of E){ if(e[0]===sel) near.add(e[1]); if(e[1]===sel) near.add(e[0]); }
      op = ids.map((_, i) => near.has(i) ? 1 : 0.15);
    }
    if(!labelOnly && (op !== null || dimmed))
      Plotly.restyle(div, {'marker.opacity': [op===null ? 1 : op]}, [fc.node_trace]);
    dimmed = op !== null;
    const t = k>0 && k<=E.length ? Math.abs(E[k-1][2]) : 0;
    label.textContent = sel===null
      ? `showing the ${k} strongest of ${E.length} edges` + (k>0 ? ` (|weight| ≥ ${t.toPrecision(3)})` : '')
      : `showing the ${n} edges of ${ids[sel]} (click another node, or "show all")`;
  }
  function showPanel(i){
    const rows = E.filter(e => e[0]===i || e[1]===i).slice(0, 40).map(e =>
      `<tr><td>${e[0]===i ? '→ ' + fcEsc(ids[e[1]]) : '← ' + fcEsc(ids[e[0]])}</td>` +
      `<td>${e[2].toPrecision(3)}</td></tr>`);
    const hover = div.data[fc.node_trace].hovertext[i];
    panel.innerHTML = `<div>${hover}</div><p><b>edges</b> (strongest first)</p><table>${rows.join('')}</table>`;
    panel.style.display = 'block';
  }
  slider.addEventListener('input', () => { k = +slider.value; sel = null; panel.style.display='none'; redraw(); });
  reset.addEventListener('click', () => { sel = null; panel.style.display='none'; redraw(); });
  div.on('plotly_click', ev => {
    const p = ev.points[0]; if(p.curveNumber !== fc.node_trace) return;
    sel = p.pointNumber; showPanel(sel); redraw();
    history.replaceState(null, '', '#tab=' + sec.dataset.index + '&node=' + encodeURIComponent(ids[sel]));
  });
  const m = location.hash.match(/node=([^&]+)/);  // a shared link can select a node
  const start = m ? ids.indexOf(decodeURIComponent(m[1])) : -1;
  if(start >= 0){ sel = start; showPanel(sel); redraw(); }
  else redraw(true);  // the figure already shows the strongest edges: only the label to fill in
}
function fcShow(i){
  document.querySelectorAll('nav button').forEach((b, j) => b.classList.toggle('on', i===j));
  document.querySelectorAll('section').forEach((s, j) => s.classList.toggle('on', i===j));
  if(!new RegExp('tab=' + i + '(&|$)').test(location.hash)) history.replaceState(null, '', '#tab=' + i);
  const sec = document.querySelectorAll('section')[i], div = sec.querySelector('.plot');
  if(!div.dataset.drawn){
    const fig = FC_FIGURES[i], t0 = performance.now();
    Plotly.newPlot(div, fig.data, fig.layout, {responsive: true, displaylogo: false}).then(() => {
      div.dataset.drawn = '1'; fcWire(div, sec);
      div.dataset.plotMs = Math.round(performance.now() - t0);  // measured by tests and benchmarks
      if(!document.body.dataset.paintMs) document.body.dataset.paintMs = Math.round(performance.now());
    });
  } else { Plotly.Plots.resize(div); }
}
fcShow(Math.min(FC_FIGURES.length - 1, +(location.hash.match(/tab=(\d+)/) || [0, 0])[1]));
