// Webhooks (Owners): the account's endpoints — add (with the events to send), edit URL
// and events, enable or disable, rotate the signing secret, delete — each with its
// delivery log and "Resend". A signing secret is shown once, here, until dismissed.

import { ApiError } from './api.js';
import { closeButtons, confirmAction, showError } from './dialogs.js';
import { byId, clearToasts, copyText, h, icon, show, toast } from './dom.js';
import { exactTime, relativeTime } from './format.js';

// gateway/webhooks.py EVENTS, with what each means.
export const EVENTS = [
  ['key.created', 'A key was created'],
  ['key.updated', 'A key was edited, disabled or enabled'],
  ['key.regenerated', 'A key got a new secret'],
  ['key.deleted', 'A key was deleted'],
  ['key.leaked', 'A key was found in public'],
  ['key.expiring', 'A key expires in 7 days or 1 day'],
  ['key.rotation_due', "A key's secret is due for rotation"],
  ['key.limit_reached', 'A key hit a rate limit'],
  ['member.added', 'A member was added'],
  ['member.removed', 'A member was removed'],
  ['member.role_changed', "A member's role changed"],
];

const STATUS_CLASS = { succeeded: 'badge-success', pending: 'badge-warning', failed: 'badge-danger' };

function when(iso) {
  return iso ? h('time', { datetime: iso, title: exactTime(iso), text: relativeTime(iso) }) : '';
}

function eventBoxes(container, chosen) {
  const set = new Set(chosen);
  container.replaceChildren(
    ...EVENTS.map(([event, text]) =>
      h(
        'label',
        { class: 'check check-compact' },
        h('input', { type: 'checkbox', name: 'event', value: event, checked: set.has(event) }),
        h('span', null, h('code', { text: event }), h('small', { text })),
      ),
    ),
  );
}

function chosenEvents(container) {
  return [...container.querySelectorAll('input[name="event"]:checked')].map((box) => box.value);
}

function fieldMessage(error, field) {
  return error instanceof ApiError ? error.fields.find((f) => f.field === field) : null;
}

export class WebhooksView {
  constructor(api) {
    this.api = api;
    this.dialogReady = false;
    byId('webhook-form').addEventListener('submit', (event) => this.add(event));
    byId('webhook-secret-copy').addEventListener('click', () => this.copySecret());
    byId('webhook-secret-done').addEventListener('click', () => this.hideSecret());
    eventBoxes(byId('webhook-events'), EVENTS.map(([event]) => event));
  }

  reset() {
    this.hideSecret();
    show(byId('webhook-error'), false);
    byId('webhooks-body').replaceChildren();
    eventBoxes(byId('webhook-events'), EVENTS.map(([event]) => event));
  }

  hideSecret() {
    byId('webhook-secret').textContent = '';
    show(byId('webhook-secret-box'), false);
  }

  showSecret(lead, secret) {
    byId('webhook-secret-lead').replaceChildren(h('strong', { text: lead }), ' Copy it into your receiver now: it verifies every request, and it is not shown again.');
    byId('webhook-secret').textContent = secret;
    // A new secret is not copied yet, whatever the button said about the one before.
    const copy = byId('webhook-secret-copy');
    copy.textContent = 'Copy';
    copy.classList.remove('is-copied');
    show(byId('webhook-secret-box'));
    copy.focus();
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
    byId('webhook-error').textContent = error instanceof ApiError || error instanceof Error ? error.message : String(error);
    show(byId('webhook-error'));
  }

  render(items) {
    show(byId('webhooks-empty'), items.length === 0);
    show(byId('webhooks-table'), items.length > 0);
    byId('webhooks-body').replaceChildren(...items.map((hook) => this.row(hook)));
  }

  button(iconName, text, label, onClick, extra = '') {
    return h(
      'button',
      { type: 'button', class: `btn btn-secondary btn-small ${extra}`.trim(), 'aria-label': label, title: text, onclick: onClick },
      iconName ? icon(iconName) : null,
      h('span', { class: 'label', text }),
    );
  }

  row(hook) {
    const all = hook.events.length === EVENTS.length;
    const row = h(
      'tr',
      { 'data-webhook-id': hook.id },
      h('td', { class: 'cell-name' }, h('code', { class: 'webhook-url', text: hook.url })),
      h('td', { text: all ? 'All events' : hook.events.length === 1 ? hook.events[0] : `${hook.events.length} events`, title: hook.events.join(', ') }),
      h('td', {}, h('span', { class: `badge ${hook.enabled ? 'badge-success' : 'badge-neutral'}`, text: hook.enabled ? 'Enabled' : 'Disabled' })),
      h(
        'td',
        { class: 'col-actions' },
        h(
          'div',
          { class: 'actions' },
          this.button('chart', 'Deliveries', `Deliveries to ${hook.url}`, () => this.toggle(hook, row)),
          this.button('edit', 'Edit', `Edit ${hook.url}`, () => this.edit(hook)),
          this.button(hook.enabled ? 'lock' : 'check', hook.enabled ? 'Disable' : 'Enable', `${hook.enabled ? 'Disable' : 'Enable'} ${hook.url}`, () => this.setEnabled(hook, !hook.enabled)),
          this.button('regenerate', 'Rotate secret', `Rotate secret of ${hook.url}`, () => this.rotate(hook)),
          this.button('trash', 'Delete', `Delete ${hook.url}`, () => this.remove(hook), 'btn-danger-text'),
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
    const events = chosenEvents(byId('webhook-events'));
    if (!url) {
      this.fail(new Error('Enter the URL that should receive the events.'));
      input.focus();
      return;
    }
    if (!events.length) {
      this.fail(new Error('Choose at least one event to send.'));
      return;
    }
    byId('webhook-add').disabled = true;
    try {
      const made = await this.api.post('/v1/webhooks', { url, events });
      input.value = '';
      await this.load();
      this.showSecret('The signing secret, shown once.', made.secret);
      toast(`Added ${made.url}.`);
    } catch (error) {
      const field = fieldMessage(error, 'url');
      this.fail(field ? new Error(`URL: ${field.message}`) : error);
    } finally {
      byId('webhook-add').disabled = false;
    }
  }

  async copySecret() {
    const secret = byId('webhook-secret').textContent;
    const button = byId('webhook-secret-copy');
    if (await copyText(secret)) {
      button.textContent = 'Copied';
      button.classList.add('is-copied');
      toast('Copied the signing secret to the clipboard.');
    } else {
      toast('Your browser did not allow copying: select the secret and copy it.', { kind: 'error' });
    }
  }

  edit(hook) {
    const dialog = byId('webhook-dialog');
    const form = byId('webhook-edit-form');
    const url = byId('webhook-edit-url');
    const errorBox = byId('webhook-edit-error');
    if (!this.dialogReady) {
      closeButtons(dialog);
      this.dialogReady = true;
    }
    url.value = hook.url;
    eventBoxes(byId('webhook-edit-events'), hook.events);
    show(errorBox, false);
    return new Promise((resolve) => {
      let saved = null;
      const onSubmit = async (event) => {
        event.preventDefault();
        const body = {};
        if (url.value.trim() !== hook.url) body.url = url.value.trim();
        const events = chosenEvents(byId('webhook-edit-events'));
        if (JSON.stringify([...events].sort()) !== JSON.stringify([...hook.events].sort())) body.events = events;
        if (!Object.keys(body).length) {
          dialog.close();
          return;
        }
        byId('webhook-edit-submit').disabled = true;
        try {
          saved = await this.api.patch(`/v1/webhooks/${encodeURIComponent(hook.id)}`, body);
          dialog.close();
        } catch (error) {
          showError(errorBox, error, "Couldn't save the endpoint.");
        } finally {
          byId('webhook-edit-submit').disabled = false;
        }
      };
      const onClose = async () => {
        form.removeEventListener('submit', onSubmit);
        dialog.removeEventListener('close', onClose);
        if (saved) {
          toast(`Saved ${saved.url}.`);
          await this.load();
        }
        resolve(saved);
      };
      form.addEventListener('submit', onSubmit);
      dialog.addEventListener('close', onClose);
      clearToasts();
      dialog.showModal();
      url.focus();
    });
  }

  async setEnabled(hook, enabled) {
    try {
      await this.api.patch(`/v1/webhooks/${encodeURIComponent(hook.id)}`, { enabled });
      toast(enabled ? `Enabled ${hook.url}: events are sent again.` : `Disabled ${hook.url}: no events are sent until you enable it.`);
      await this.load();
      byId('webhooks-body').querySelector(`tr[data-webhook-id="${CSS.escape(hook.id)}"] button[title="${enabled ? 'Disable' : 'Enable'}"]`)?.focus();
    } catch (error) {
      toast(error.message, { kind: 'error' });
    }
  }

  async rotate(hook) {
    const rotated = await confirmAction({
      title: 'Rotate the signing secret?',
      paragraphs: [`${hook.url} gets a new signing secret now; requests are no longer signed with the current one. Update your receiver with the new secret, shown once.`],
      confirmLabel: 'Rotate secret',
      busyLabel: 'Rotating…',
      action: () => this.api.post(`/v1/webhooks/${encodeURIComponent(hook.id)}/rotate-secret`),
    });
    if (!rotated) return;
    this.showSecret('The new signing secret, shown once.', rotated.secret);
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
      const head = h('thead', {}, h('tr', {}, ['Event', 'Status', 'Attempts', 'Answer', 'When'].map((text) => h('th', { scope: 'col', text })), h('th', { scope: 'col' }, h('span', { class: 'visually-hidden', text: 'Actions' }))));
      const rows = data.items.map((d) =>
        h(
          'tr',
          { 'data-delivery-id': d.id },
          h('td', {}, h('code', { text: d.event_type })),
          h('td', {}, h('span', { class: `badge ${STATUS_CLASS[d.status] ?? 'badge-neutral'}`, text: d.status })),
          h('td', { text: `${d.attempts} ${d.attempts === 1 ? 'attempt' : 'attempts'}` }),
          h('td', { class: 'muted', text: d.last_error ?? (d.response_status ? `HTTP ${d.response_status}${d.latency_ms !== null ? ` in ${Math.round(d.latency_ms)} ms` : ''}` : '') }),
          h('td', {}, when(d.last_attempt_at ?? d.created_at)),
          h('td', {}, h('button', { type: 'button', class: 'btn btn-secondary btn-small', text: 'Resend', 'aria-label': `Resend ${d.event_type}`, onclick: () => this.resend(hook, d, cell) })),
        ),
      );
      cell.replaceChildren(h('table', { class: 'deliveries-table' }, h('caption', { class: 'visually-hidden', text: `Deliveries to ${hook.url}` }), head, h('tbody', {}, rows)));
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
    if (removed) {
      toast(`Deleted ${hook.url}.`);
      await this.load();
    }
  }
}
