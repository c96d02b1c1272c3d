// The canary on a service page: its steps as bars (the canary's share), and per step the stable
// and the canary release's error rate and mean latency, drawn as SVG from the JSON API and
// redrawn every second; Promote / Abort while a deploy waits. Uses h(), api(), badge() of app.js.
'use strict';

const SVG_NS = 'http://www.w3.org/2000/svg';

/** Creates an SVG element: svg('rect', {x: 1}, child…). */
function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const STATE_COLOR = {
  passed: '#2e8b57', failed: '#c0392b', running: '#e6a23c', waiting: '#e6a23c',
  stopped: '#8a8f98', pending: '#c9ced6',
};
const percent = (rate) => `${(rate * 100).toFixed(2)}%`;
const millis = (ms) => (ms === null || ms === undefined ? '-' : `${ms.toFixed(1)} ms`);

/** Two bars side by side (stable, canary) scaled to `max`, with their labels. */
function pair(x, y, height, stable, canary, max, label, show) {
  const scale = (v) => (max > 0 ? Math.max(1, (v / max) * height) : 1);
  const bar = (dx, value, color, cls) => value === null || value === undefined ? null : svg('g', {},
    svg('rect', { class: cls, x: x + dx, y: y + height - scale(value), width: 26, height: scale(value), fill: color }),
    svg('text', { x: x + dx + 13, y: y + height + 12, 'text-anchor': 'middle', 'font-size': 9 }, show(value)));
  return svg('g', {},
    svg('text', { x: x + 28, y: y - 4, 'text-anchor': 'middle', 'font-size': 10, fill: '#555' }, label),
    bar(0, stable, '#8a8f98', 'stable'),
    bar(30, canary, '#3b6fd8', 'canary'));
}

/** The chart: one column per step. */
function canaryChart(view) {
  const column = 130;
  const width = Math.max(1, view.steps.length) * column + 20;
  const rates = view.steps.flatMap((s) => [s.stable?.error_rate, s.canary?.error_rate]).filter((v) => v !== undefined);
  const latencies = view.steps.flatMap((s) => [s.stable?.mean_latency_ms, s.canary?.mean_latency_ms]).filter((v) => v !== undefined && v !== null);
  const maxRate = Math.max(0.01, ...rates);
  const maxLatency = Math.max(1, ...latencies);
  const columns = view.steps.map((step, i) => {
    const x = 10 + i * column;
    const color = STATE_COLOR[step.state] || '#c9ced6';
    const share = step.share === null ? null : step.share;
    const shareHeight = share === null ? 0 : (share / 100) * 80;
    const head = share === null
      ? svg('g', { class: 'pause-mark', fill: color },
        svg('rect', { x: x + 44, y: 45, width: 8, height: 30, rx: 2 }),
        svg('rect', { x: x + 58, y: 45, width: 8, height: 30, rx: 2 }))
      : svg('rect', { class: 'share', x: x + 20, y: 90 - shareHeight, width: 70, height: shareHeight, fill: color, rx: 3 });
    return svg('g', { id: `canary-step-${i + 1}`, 'data-plan-step': step.number, 'data-state': step.state, 'data-kind': step.kind },
      svg('title', {}, step.result || step.state),
      svg('rect', { x: x + 2, y: 2, width: column - 14, height: 316, fill: 'none', stroke: '#e3e6eb', rx: 6 }),
      head,
      svg('text', { x: x + 55, y: 108, 'text-anchor': 'middle', 'font-size': 12, 'font-weight': 'bold' },
        share === null ? 'pause' : `${share}%`),
      svg('text', { x: x + 55, y: 124, 'text-anchor': 'middle', 'font-size': 11, fill: color }, step.state),
      pair(x + 25, 150, 50, step.stable?.error_rate, step.canary?.error_rate, maxRate, 'errors', percent),
      pair(x + 25, 240, 50, step.stable?.mean_latency_ms, step.canary?.mean_latency_ms, maxLatency, 'latency', millis),
      step.canary && svg('text', { x: x + 55, y: 312, 'text-anchor': 'middle', 'font-size': 9, fill: '#555' },
        `${step.canary.requests} / ${step.stable ? step.stable.requests : 0} req`));
  });
  return svg('svg', { id: 'canary-chart', viewBox: `0 0 ${width} 320`, width, height: 320, role: 'img',
    'aria-label': 'canary steps with the stable (grey) and canary (blue) error rate and latency' }, columns);
}

/** The canary panel of `service`; `canDeploy()` says whether to offer Promote / Abort. */
function canaryPanel(service, panel, canDeploy) {
  const error = h('p', { class: 'error', id: 'canary-error' });
  const decide = (button, what) => attempt(button, error, async () => {
    if (what === 'abort' && !confirm(`Abort the paused deploy of ${service} and roll it back?`)) return;
    await api('POST', `/api/services/${enc(service)}/${what}`);
    await draw();
  });
  const draw = async () => {
    let data;
    try {
      data = await api('GET', `/api/services/${enc(service)}/canary`);
    } catch (e) {
      panel.replaceChildren(h('p', { class: 'error' }, e.message));
      return;
    }
    if (!data.canary && !data.paused) {
      panel.classList.add('hidden');
      return;
    }
    panel.classList.remove('hidden');
    const parts = [];
    if (data.canary) {
      parts.push(h('h2', {}, `Canary: deploy #${data.canary.deploy} of ${data.canary.version} `,
        badge(data.canary.outcome)));
    }
    if (data.paused) {
      const p = data.paused;
      const box = [h('strong', {}, `Paused at step ${p.step} of ${p.steps}: `), p.why,
        h('div', { class: 'muted' }, `since ${clock(p.since_ms)}; aborts on its own at ${clock(p.until_ms)}`,
          p.holder_alive ? '' : ' (the process that ran it is gone: Promote resumes it here)')];
      if (canDeploy()) {
        const promote = h('button', { class: 'primary', id: 'promote-button', type: 'button',
          onclick: () => decide(promote, 'promote') }, 'Promote');
        const abort = h('button', { class: 'danger', id: 'abort-button', type: 'button',
          onclick: () => decide(abort, 'abort') }, 'Abort');
        box.push(h('div', { class: 'row' }, promote, abort));
      } else {
        box.push(h('p', { class: 'muted' }, 'A deployer of this service may promote or abort it.'));
      }
      parts.push(h('div', { class: 'paused', id: 'paused' }, box));
    }
    if (data.canary) parts.push(canaryChart(data.canary));
    parts.push(error);
    panel.replaceChildren(...parts);
  };
  return every(1000, draw);
}
