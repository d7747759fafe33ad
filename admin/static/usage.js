// Usage: hourly requests by outcome for 24 hours or 7 days, for one key or the whole
// account, as a uPlot chart (vendored, see vendor/README.md) with totals; failed attempts
// in red. The account view adds the top keys by requests and by failures.

import uPlot from './vendor/uplot.js';
import { ApiError } from './api.js';
import { byId, h, show } from './dom.js';

export const OUTCOMES = [
  ['ok', 'OK', '#4f46e5'],
  ['upstream_4xx', 'Upstream 4xx', '#b54708'],
  ['upstream_5xx', 'Upstream 5xx', '#7a2e0e'],
  ['rate_limited', 'Rate limited', '#667085'],
  ['denied', 'Denied', '#e04f16'],
  ['failed_auth', 'Failed auth', '#d92d20'],
];
const FAILURES = new Set(['denied', 'failed_auth']);
const HOUR = 3600 * 1000;
const number = new Intl.NumberFormat('en');

/** One entry per hour in [from, to), zero where the API listed nothing. */
function hourly(items, hours, end) {
  const last = Math.floor(end / HOUR) * HOUR;
  const first = last - (hours - 1) * HOUR;
  const byHour = new Map(items.map((item) => [Date.parse(item.hour), item]));
  const xs = [];
  const series = OUTCOMES.map(() => []);
  for (let t = first; t <= last; t += HOUR) {
    xs.push(t / 1000);
    const item = byHour.get(t);
    OUTCOMES.forEach(([outcome], i) => series[i].push(item ? item[outcome] : 0));
  }
  return [xs, ...series];
}

export class UsageView {
  constructor(api) {
    this.api = api;
    this.chart = null;
    this.keyId = '';
    this.request = 0;
    byId('usage-key').addEventListener('change', () => this.select(byId('usage-key').value));
    for (const radio of document.querySelectorAll('input[name="usage-range"]')) {
      radio.addEventListener('change', () => this.load());
    }
    // The chart follows the width of its card (390 px phones to wide screens).
    this.resize = new ResizeObserver(() => this.chart?.setSize(this.size()));
    this.resize.observe(byId('usage-chart'));
  }

  reset() {
    this.keyId = '';
    this.chart?.destroy();
    this.chart = null;
    byId('usage-key').replaceChildren(h('option', { value: '', text: 'All keys' }));
  }

  size() {
    const width = Math.max(280, byId('usage-chart').clientWidth);
    return { width, height: width < 500 ? 220 : 280 };
  }

  hours() {
    return Number(document.querySelector('input[name="usage-range"]:checked').value);
  }

  /** Show one key (id) or the whole account (''). */
  async select(keyId, name = null) {
    this.keyId = keyId;
    const select = byId('usage-key');
    if (keyId && !select.querySelector(`option[value="${CSS.escape(keyId)}"]`)) {
      select.append(h('option', { value: keyId, text: name ?? keyId }));
    }
    select.value = keyId;
    await this.load();
  }

  async fillKeys() {
    try {
      const data = await this.api.get('/v1/keys?limit=100');
      const select = byId('usage-key');
      const chosen = this.keyId;
      select.replaceChildren(
        h('option', { value: '', text: 'All keys' }),
        ...data.items.map((key) => h('option', { value: key.id, text: key.name })),
      );
      if (chosen && !select.querySelector(`option[value="${CSS.escape(chosen)}"]`)) select.append(h('option', { value: chosen, text: chosen }));
      select.value = chosen;
    } catch {
      // the chart still loads; the list is a convenience
    }
  }

  async load() {
    const ticket = ++this.request;
    const hours = this.hours();
    const end = Date.now();
    const query = new URLSearchParams({
      from: new Date(Math.floor(end / HOUR) * HOUR - (hours - 1) * HOUR).toISOString(),
      to: new Date(end).toISOString(),
    });
    show(byId('usage-error'), false);
    let data;
    try {
      if (this.keyId) {
        data = await this.api.get(`/v1/keys/${encodeURIComponent(this.keyId)}/usage?${query}`);
      } else {
        query.set('limit', '5');
        data = await this.api.get(`/v1/usage?${query}`);
      }
    } catch (error) {
      if (ticket !== this.request) return;
      const gone = error instanceof ApiError && error.status === 404;
      byId('usage-error').textContent = gone ? 'This key no longer exists.' : `Couldn't load the usage. ${error.message}`;
      show(byId('usage-error'));
      return;
    }
    if (ticket !== this.request) return; // a newer choice overtook this one
    this.render(data, hours, end);
  }

  render(data, hours, end) {
    const which = this.keyId ? `“${byId('usage-key').selectedOptions[0]?.textContent ?? 'this key'}”` : 'all keys';
    const period = hours === 24 ? 'the last 24 hours' : 'the last 7 days';
    const totals = data.totals;
    const failures = totals.failed_auth + totals.denied;
    byId('usage-caption').textContent = `Requests per hour for ${which} over ${period}: ${number.format(totals.total)} in all, ${number.format(failures)} failed attempts.`;
    byId('usage-totals').replaceChildren(
      h('div', { class: 'stat' }, h('span', { class: 'stat-label', text: 'Requests' }), h('strong', { class: 'stat-value', 'data-outcome': 'total', text: number.format(totals.total) })),
      ...OUTCOMES.map(([outcome, label]) => {
        const alarming = FAILURES.has(outcome) && totals[outcome] > 0;
        return h(
          'div',
          { class: `stat${alarming ? ' stat-alarm' : ''}`, 'data-outcome': outcome },
          h('span', { class: 'stat-label', text: label }),
          h('strong', { class: 'stat-value', text: number.format(totals[outcome]) }),
        );
      }),
    );
    show(byId('usage-empty'), totals.total === 0);
    this.draw(hourly(data.items, hours, end));
    show(byId('usage-top'), !this.keyId);
    if (!this.keyId) {
      this.topList('top-requests', data.top_by_requests, 'total', 'requests', 'No requests yet.');
      this.topList('top-failures', data.top_by_failures, 'failures', 'failed attempts', 'No failed attempts.');
    }
  }

  topList(id, items, field, unit, empty) {
    const list = byId(id);
    if (!items.length) {
      list.replaceChildren(h('li', { class: 'muted top-empty', text: empty }));
      return;
    }
    list.replaceChildren(
      ...items.map((item) =>
        h(
          'li',
          { class: 'top-item', 'data-key-id': item.key_id },
          item.deleted
            ? h('span', { class: 'top-name', text: `${item.name} (deleted)` })
            : h('button', { type: 'button', class: 'link-button top-name', text: item.name, onclick: () => this.select(item.key_id, item.name) }),
          h('span', { class: `top-count${field === 'failures' ? ' text-danger' : ''}`, text: `${number.format(item[field])} ${unit}` }),
        ),
      ),
    );
  }

  draw(data) {
    if (this.chart) {
      this.chart.setData(data);
      return;
    }
    const options = {
      ...this.size(),
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(4, max)] } },
      axes: [{ stroke: '#667085', grid: { stroke: '#eaecf0' } }, { stroke: '#667085', grid: { stroke: '#eaecf0' } }],
      series: [
        {},
        ...OUTCOMES.map(([outcome, label, color]) => ({
          label,
          stroke: color,
          width: FAILURES.has(outcome) ? 2.5 : 1.75,
          fill: outcome === 'ok' ? 'rgba(79, 70, 229, 0.08)' : undefined,
          points: { show: false },
        })),
      ],
    };
    this.chart = new uPlot(options, data, byId('usage-chart'));
  }
}
