// A key's validations per hour or per day as stacked bars (valid, rate
// limited, other refusals), drawn as SVG at the width it is given, with a
// summary as its accessible name and the same numbers as a table.

import { formatDayAndTime, formatHour, formatMonthDay, plural } from './format.js';

const SVG = 'http://www.w3.org/2000/svg';

/** The outcomes shown, bottom to top, and how GetKeyUsage codes fall into them. */
export const OUTCOMES = [
  { id: 'valid', label: 'Valid', codes: ['VALIDATION_CODE_VALID'] },
  { id: 'limited', label: 'Rate limited', codes: ['VALIDATION_CODE_RATE_LIMITED'] },
  { id: 'other', label: 'Other refusals', codes: null },
];

function outcomeOf(code) {
  return OUTCOMES.find((o) => o.codes?.includes(code)) ?? OUTCOMES[2];
}

/** GetKeyUsage buckets as `{ start, valid, limited, other, total }`. */
export function tally(buckets) {
  return buckets.map((bucket) => {
    const row = { start: new Date(bucket.startTime), valid: 0, limited: 0, other: 0, total: 0 };
    for (const { code, count } of bucket.counts ?? []) {
      const n = Number(count ?? 0);
      row[outcomeOf(code).id] += n;
      row.total += n;
    }
    return row;
  });
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

/** A round axis maximum: 1, 2, 5, 10, 20, 50, ... at or above `n`. */
function niceMax(n) {
  if (n <= 4) return 4;
  const magnitude = 10 ** Math.floor(Math.log10(n));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * magnitude >= n) return step * magnitude;
  }
  return 10 * magnitude;
}

function describe(rows, range) {
  const sum = (id) => rows.reduce((total, row) => total + row[id], 0);
  const unit = range === 'days' ? 'day' : 'hour';
  const span = range === 'days' ? 'the last 30 days' : 'the last 24 hours';
  return `Requests per ${unit} over ${span}: ${plural(sum('valid'), 'valid request')}, `
    + `${sum('limited').toLocaleString('en')} rate limited, ${plural(sum('other'), 'other refusal')}`;
}

function bucketLabel(row, range) {
  return range === 'days' ? formatMonthDay(row.start) : formatHour(row.start);
}

function drawBars(rows, range, width) {
  const height = 180;
  const pad = { top: 12, right: 8, bottom: 26, left: 36 };
  const plotWidth = Math.max(width - pad.left - pad.right, 40);
  const plotHeight = height - pad.top - pad.bottom;
  const max = niceMax(Math.max(...rows.map((r) => r.total), 0));
  const slot = plotWidth / rows.length;
  const barWidth = Math.max(Math.min(slot * 0.7, 28), 2);
  const y = (value) => pad.top + plotHeight - (value / max) * plotHeight;

  const chart = svg('svg', {
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    class: 'chart',
    role: 'img',
    'aria-label': describe(rows, range),
  });
  for (const tick of [0, max / 2, max]) {
    chart.append(
      svg('line', { x1: pad.left, x2: width - pad.right, y1: y(tick), y2: y(tick), class: 'grid' }),
      svg('text', { x: pad.left - 8, y: y(tick) + 4, class: 'axis', 'text-anchor': 'end' },
        tick.toLocaleString('en')),
    );
  }
  const labelEvery = Math.ceil(rows.length / Math.max(Math.floor(plotWidth / 56), 1));
  rows.forEach((row, i) => {
    const x = pad.left + i * slot + (slot - barWidth) / 2;
    const group = svg('g', {}, svg('title', {},
      `${formatDayAndTime(row.start)}: ${row.valid} valid, ${row.limited} rate limited, ${row.other} other refusals`));
    let top = y(0);
    for (const outcome of OUTCOMES) {
      const value = row[outcome.id];
      if (value === 0) continue;
      const h = (value / max) * plotHeight;
      top -= h;
      group.append(svg('rect', { x, y: top, width: barWidth, height: h, class: `bar ${outcome.id}` }));
    }
    if (row.total === 0) {
      group.append(svg('rect', { x, y: y(0) - 1, width: barWidth, height: 1, class: 'bar empty' }));
    }
    chart.append(group);
    if ((rows.length - 1 - i) % labelEvery === 0) {
      // Labels centred under their bar, but never past the chart's edges.
      const label = bucketLabel(row, range);
      const half = label.length * 3.3;
      const centre = Math.min(Math.max(x + barWidth / 2, pad.left + half), width - half - 1);
      chart.append(svg('text', { x: centre, y: height - 8, class: 'axis', 'text-anchor': 'middle' }, label));
    }
  });
  return chart;
}

function table(rows, range) {
  const unit = range === 'days' ? 'Day' : 'Hour starting';
  const head = el('tr', {}, ...[unit, ...OUTCOMES.map((o) => o.label), 'Total']
    .map((text) => el('th', { scope: 'col' }, text)));
  const body = rows.map((row) => el('tr', {},
    el('th', { scope: 'row' }, range === 'days' ? formatMonthDay(row.start) : formatDayAndTime(row.start)),
    ...[row.valid, row.limited, row.other, row.total].map((n) => el('td', {}, n.toLocaleString('en')))));
  return el('table', { class: 'usage-table' },
    el('caption', {}, range === 'days' ? 'Requests per day, last 30 days' : 'Requests per hour, last 24 hours'),
    el('thead', {}, head),
    el('tbody', {}, ...body));
}

function legend(rows) {
  return el('ul', { class: 'legend' }, ...OUTCOMES.map((o) => {
    const total = rows.reduce((sum, row) => sum + row[o.id], 0);
    return el('li', {}, el('span', { class: `swatch ${o.id}`, 'aria-hidden': 'true' }),
      `${o.label} `, el('strong', {}, total.toLocaleString('en')));
  }));
}

/**
 * Fills `container` with the chart of `buckets` and redraws it when the
 * container's width changes. Returns a function that stops watching.
 */
export function renderUsage(container, buckets, range) {
  const rows = tally(buckets);
  const plot = el('div', { class: 'chart-frame' });
  const details = el('details', { class: 'usage-details' }, el('summary', {}, 'Show as table'), table(rows, range));
  container.replaceChildren(legend(rows), plot, details);
  let drawnWidth = 0;
  const draw = () => {
    const width = Math.floor(plot.clientWidth);
    if (width === 0 || width === drawnWidth) return;
    drawnWidth = width;
    plot.replaceChildren(drawBars(rows, range, width));
  };
  const observer = new ResizeObserver(draw);
  observer.observe(plot);
  draw();
  return () => observer.disconnect();
}
