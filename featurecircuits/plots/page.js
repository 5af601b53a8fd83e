const FC_ENT = {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'};
function fcEsc(s){ return String(s).replace(/[&<>"']/g, c => FC_ENT[c]); }
function fcEdgeText(fc, e){
  return '<b>' + fcEsc(fc.labels[e[0]]) + '</b> → <b>' + fcEsc(fc.labels[e[1]]) + '</b><br>edge toward the clean answer '
    + (e[2] >= 0 ? '+' : '') + e[2].toPrecision(4);
}
// A feature's card from its dossier: label, density, histogram, contexts with the activation of every token
// shaded (the peak token boxed), lower-band samples, promoted and suppressed tokens.
function fcContext(c){
  const top = Math.max(...c.acts.map(Math.abs), 1e-9);
  return '<div class="ctx">' + c.tokens.map((t, j) => `<span style="background:rgba(192,57,43,${
    (0.65 * Math.max(0, c.acts[j]) / top).toFixed(2)})"${j === c.peak ? ' class="peak"' : ''} title="${
    c.acts[j].toPrecision(3)}">${fcEsc(t)}</span>`).join('') + ` <i>${c.act.toPrecision(3)}</i></div>`;
}
function fcTokens(list){
  return (list || []).map(t => `${fcEsc(t.token)} <i>${t.value.toPrecision(2)}</i>`).join(', ');
}
function fcCard(card){
  const h = card.histogram || {counts: []}, hmax = Math.max(...h.counts, 1);
  const bars = h.counts.map(n => `<span class="bar" style="height:${Math.max(1, 28 * n / hmax)}px"></span>`).join('');
  let html = `<div class="card"><p><b>${card.label ? fcEsc(card.label.includes('‹') ? card.label : '‹' + card.label + '›') : 'no label'}</b>` +
    (card.label_source ? ` <span class="help">(label: ${fcEsc(card.label_source)})</span>` : '') + '</p>';
  html += `<p>fires on ${(100 * (card.density || 0)).toPrecision(2)}% of ${card.n_tokens || '?'} tokens ` +
    `(${fcEsc(card.corpus || 'corpus')}${card.task_prompts ? ': the task\'s own prompts' : ''}); max ` +
    `${(card.act_max || 0).toPrecision(3)}</p><div class="hist" title="activation histogram">${bars}</div>`;
  html += '<p><b>top contexts</b></p>' + card.contexts.map(fcContext).join('');
  for(const s of card.samples || []){ if(s.examples.length) html += `<p>${fcEsc(s.name)}</p>` +
    s.examples.map(fcContext).join(''); }
  if(card.promoted && card.promoted.length) html += `<p><b>promotes</b> ${fcTokens(card.promoted)}</p>` +
    `<p><b>suppresses</b> ${fcTokens(card.suppressed)}</p>`;
  return html + '</div>';
}
// Wires one circuit figure: the edge slider (strongest k edges), edge hover, a click on a node shows only its
// edges and a panel with its details; everything reads the figure's layout.meta.featurecircuits.
function fcWire(div, view){
  const fc = (div.layout.meta || {}).featurecircuits; if(!fc) return;
  const nb = fc.buckets.length, E = fc.edges, ids = fc.ids;
  const slider = view.querySelector('.edges'), label = view.querySelector('.edgelabel');
  const panel = view.querySelector('.panel'), reset = view.querySelector('.reset');
  let k = fc.shown, sel = null, dimmed = false;
  slider.max = E.length; slider.value = k;
  function bucket(w){
    const r = Math.abs(w) / fc.weight_scale;
    for(let i = 0; i < nb; i++){ if(r < fc.buckets[i]) return i; }
    return nb - 1;
  }
  function redraw(labelOnly){
    const xs=[], ys=[]; for(let b=0;b<2*nb;b++){xs.push([]); ys.push([]);}
    const mx=[], my=[], mt=[];
    let n=0;
    for(let i=0;i<E.length;i++){
      const e=E[i];
      if(sel===null ? i>=k : (e[0]!==sel && e[1]!==sel)) continue;
      const b=(e[2]>=0?0:nb)+bucket(e[2]);
      xs[b].push(fc.x[e[0]], fc.x[e[1]], null); ys[b].push(fc.y[e[0]], fc.y[e[1]], null); n++;
      mx.push((fc.x[e[0]]+fc.x[e[1]])/2); my.push((fc.y[e[0]]+fc.y[e[1]])/2); mt.push(fcEdgeText(fc, e));
    }
    if(!labelOnly){
      Plotly.restyle(div, {x: xs, y: ys}, fc.edge_traces);
      Plotly.restyle(div, {x: [mx], y: [my], hovertext: [mt]}, [fc.hover_trace]);
    }
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
      : `showing the ${n} edges of ${fc.labels[sel]} (click another node, or "show all")`;
  }
  function showPanel(i){
    const rows = E.filter(e => e[0]===i || e[1]===i).slice(0, 40).map(e =>
      `<tr><td>${e[0]===i ? '→ ' + fcEsc(fc.labels[e[1]]) : '← ' + fcEsc(fc.labels[e[0]])}</td>` +
      `<td>${(e[2] >= 0 ? '+' : '') + e[2].toPrecision(3)}</td></tr>`);
    const hover = div.data[fc.node_trace].hovertext[i];
    const card = (fc.cards || {})[i];
    panel.innerHTML = `<div>${hover}</div>` + (card ? fcCard(card) : '') +
      `<p><b>edges</b> (strongest first; + toward the clean answer)</p><table>${rows.join('')}</table>`;
    panel.style.display = 'block';
  }
  slider.addEventListener('input', () => { k = +slider.value; sel = null; panel.style.display='none'; redraw(); });
  reset.addEventListener('click', () => { sel = null; panel.style.display='none'; redraw(); });
  div.on('plotly_click', ev => {
    const p = ev.points[0]; if(p.curveNumber !== fc.node_trace) return;
    sel = p.pointNumber; showPanel(sel); redraw();
    history.replaceState(null, '', '#tab=' + view.closest('section').dataset.index + '&node=' +
                         encodeURIComponent(ids[sel]));
  });
  const m = location.hash.match(/node=([^&]+)/);  // a shared link can select a node
  const start = m ? ids.indexOf(decodeURIComponent(m[1])) : -1;
  if(start >= 0){ sel = start; showPanel(sel); redraw(); }
  else redraw(true);  // the figure already shows the strongest edges: only the label to fill in
}
function fcDraw(i, j){
  const sec = document.querySelectorAll('section')[i];
  const views = sec.querySelectorAll('.view');
  views.forEach((v, n) => v.style.display = n === j ? 'block' : 'none');
  sec.querySelectorAll('.views button').forEach((b, n) => b.classList.toggle('on', n === j));
  const view = views[j], div = view.querySelector('.plot');
  if(!div.dataset.drawn){
    const fig = FC_FIGURES[i][j], t0 = performance.now();
    Plotly.newPlot(div, fig.data, fig.layout, {responsive: true, displaylogo: false}).then(() => {
      div.dataset.drawn = '1'; fcWire(div, view);
      div.dataset.plotMs = Math.round(performance.now() - t0);  // measured by tests and benchmarks
      if(!document.body.dataset.paintMs) document.body.dataset.paintMs = Math.round(performance.now());
    });
  } else { Plotly.Plots.resize(div); }
}
function fcShow(i){
  document.querySelectorAll('nav button').forEach((b, j) => b.classList.toggle('on', i===j));
  document.querySelectorAll('section').forEach((s, j) => s.classList.toggle('on', i===j));
  if(!new RegExp('tab=' + i + '(&|$)').test(location.hash)) history.replaceState(null, '', '#tab=' + i);
  const sec = document.querySelectorAll('section')[i];
  const on = sec.querySelector('.views button.on');
  fcDraw(i, on ? +on.dataset.view : 0);
}
document.querySelectorAll('section').forEach((sec, i) => sec.querySelectorAll('.views button').forEach(b =>
  b.addEventListener('click', () => fcDraw(i, +b.dataset.view))));
fcShow(Math.min(FC_FIGURES.length - 1, +(location.hash.match(/tab=(\d+)/) || [0, 0])[1]));
