// Webhooks (Owners): the account's endpoints, each with its recent deliveries and
// "Resend"; adding one shows its signing secret once, here, until the page moves on.

import { ApiError } from './api.js';
import { confirmAction } from './dialogs.js';
import { byId, copyText, h, show, toast } from './dom.js';
import { exactTime, relativeTime } from './format.js';

const STATUS_CLASS = { succeeded: 'badge-success', pending: 'badge-warning', failed: 'badge-danger' };

function when(iso) {
  return iso ? h('time', { datetime: iso, title: exactTime(iso), text: relativeTime(iso) }) : '';
}

export class WebhooksView {
  constructor(api) {
    this.api = api;
    this.events = [];
    byId('webhook-form').addEventListener('submit', (event) => this.add(event));
    byId('webhook-secret-copy').addEventListener('click', () => this.copySecret());
  }

  reset() {
    byId('webhook-secret').textContent = '';
    show(byId('webhook-secret-box'), false);
    show(byId('webhook-error'), false);
    byId('webhooks-body').replaceChildren();
  }

  async load() {
    try {
      const data = await this.api.get('/v1/webhooks?limit=100');
      this.render(data.items);
    } catch (error) {
      this.fail(error);
    }
  }

  fail(error) {
    byId('webhook-error').textContent = error instanceof ApiError ? error.message : String(error);
    show(byId('webhook-error'));
  }

  render(items) {
    show(byId('webhooks-empty'), items.length === 0);
    show(byId('webhooks-table'), items.length > 0);
    byId('webhooks-body').replaceChildren(...items.map((hook) => this.row(hook)));
  }

  row(hook) {
    const row = h(
      'tr',
      { 'data-webhook-id': hook.id },
      h('td', { class: 'cell-name' }, h('code', { class: 'webhook-url', text: hook.url })),
      h('td', { text: hook.events.length === 11 ? 'All events' : `${hook.events.length} events`, title: hook.events.join(', ') }),
      h('td', {}, h('span', { class: `badge ${hook.enabled ? 'badge-success' : 'badge-neutral'}`, text: hook.enabled ? 'Enabled' : 'Disabled' })),
      h(
        'td',
        { class: 'col-actions' },
        h(
          'div',
          { class: 'actions' },
          h('button', { type: 'button', class: 'btn btn-secondary btn-small', text: 'Deliveries', onclick: () => this.toggle(hook, row) }),
          h('button', { type: 'button', class: 'btn btn-secondary btn-small btn-danger-text', text: 'Delete', onclick: () => this.remove(hook) }),
        ),
      ),
    );
    return row;
  }

  async add(event) {
    event.preventDefault();
    const input = byId('webhook-url');
    show(byId('webhook-error'), false);
    const url = input.value.trim();
    if (!url) {
      this.fail(new Error('Enter the URL that should receive the events.'));
      return;
    }
    byId('webhook-add').disabled = true;
    try {
      const all = ['key.created', 'key.updated', 'key.regenerated', 'key.deleted', 'key.leaked', 'key.expiring', 'key.rotation_due', 'key.limit_reached', 'member.added', 'member.removed', 'member.role_changed'];
      const made = await this.api.post('/v1/webhooks', { url, events: all });
      input.value = '';
      byId('webhook-secret').textContent = made.secret;
      show(byId('webhook-secret-box'));
      await this.load();
    } catch (error) {
      const field = error instanceof ApiError ? error.fields.find((f) => f.field === 'url') : null;
      this.fail(field ? new Error(`URL: ${field.message}`) : error);
    } finally {
      byId('webhook-add').disabled = false;
    }
  }

  async copySecret() {
    const secret = byId('webhook-secret').textContent;
    if (await copyText(secret)) toast('Copied the signing secret to the clipboard.');
    else toast('Your browser did not allow copying: select the secret and copy it.', { kind: 'error' });
  }

  async toggle(hook, row) {
    const next = row.nextElementSibling;
    if (next && next.classList.contains('deliveries-row')) {
      next.remove();
      return;
    }
    const cell = h('td', { colspan: '4' }, h('p', { class: 'muted', text: 'Loading deliveries…' }));
    const detail = h('tr', { class: 'deliveries-row' }, cell);
    row.after(detail);
    await this.fillDeliveries(hook, cell);
  }

  async fillDeliveries(hook, cell) {
    try {
      const data = await this.api.get(`/v1/webhooks/${encodeURIComponent(hook.id)}/deliveries?limit=20`);
      if (data.items.length === 0) {
        cell.replaceChildren(h('p', { class: 'muted', text: 'No deliveries yet.' }));
        return;
      }
      const rows = data.items.map((d) =>
        h(
          'tr',
          { 'data-delivery-id': d.id },
          h('td', { text: d.event_type }),
          h('td', {}, h('span', { class: `badge ${STATUS_CLASS[d.status] ?? 'badge-neutral'}`, text: d.status })),
          h('td', { text: `${d.attempts} ${d.attempts === 1 ? 'attempt' : 'attempts'}` }),
          h('td', { class: 'muted', text: d.last_error ?? (d.response_status ? `HTTP ${d.response_status}` : '') }),
          h('td', {}, when(d.last_attempt_at ?? d.created_at)),
          h('td', {}, h('button', { type: 'button', class: 'btn btn-secondary btn-small', text: 'Resend', onclick: () => this.resend(hook, d, cell) })),
        ),
      );
      cell.replaceChildren(h('table', { class: 'deliveries-table' }, h('tbody', {}, rows)));
    } catch (error) {
      cell.replaceChildren(h('p', { class: 'field-error', text: error.message }));
    }
  }

  async resend(hook, delivery, cell) {
    try {
      await this.api.post(`/v1/webhooks/${encodeURIComponent(hook.id)}/deliveries/${encodeURIComponent(delivery.id)}/resend`);
      toast(`Queued ${delivery.event_type} again.`);
      await this.fillDeliveries(hook, cell);
    } catch (error) {
      toast(error.message, { kind: 'error' });
    }
  }

  async remove(hook) {
    const removed = await confirmAction({
      title: 'Delete this webhook endpoint?',
      paragraphs: [`${hook.url} stops receiving events at once. Its delivery log is deleted with it.`],
      confirmLabel: 'Delete endpoint',
      busyLabel: 'Deleting…',
      action: () => this.api.delete(`/v1/webhooks/${encodeURIComponent(hook.id)}`),
    });
    if (removed) await this.load();
  }
}
