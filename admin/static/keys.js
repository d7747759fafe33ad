// The key table: list (cursor pagination), copy the partial key, regenerate, delete, create.

import { ApiError } from './api.js';
import { confirmAction, createKeyDialog, revealKey } from './dialogs.js';
import { byId, copyText, h, icon, show, toast } from './dom.js';
import { exactTime, relativeTime, shortDate } from './format.js';

export const PAGE_SIZE = 20;

function timeCell(iso, { emptyText, relative }) {
  if (!iso) return h('span', { class: 'muted', text: emptyText });
  return h('time', {
    datetime: iso,
    title: exactTime(iso),
    class: relative ? 'relative-time' : null,
    text: relative ? relativeTime(iso) : shortDate(iso),
  });
}

// A key GitHub secret scanning found in public: red, linking to where it was found (an
// http(s) URL only: the API keeps no other), with what was done to it.
function leakedBadge(key) {
  const done = key.enabled ? 'still active: regenerate it now' : 'disabled: regenerate it to use it again';
  const props = {
    class: 'badge badge-danger badge-leaked',
    title: `Found in public ${exactTime(key.leaked_at)}; ${done}.`,
    text: key.enabled ? 'Leaked' : 'Leaked · disabled',
  };
  if (key.leak_url && /^https?:\/\//.test(key.leak_url)) {
    return h('a', { ...props, href: key.leak_url, target: '_blank', rel: 'noopener noreferrer' });
  }
  return h('span', props);
}

function badges(key) {
  const out = [];
  if (key.leaked_at) out.push(leakedBadge(key));
  if (key.status === 'disabled' && !key.leaked_at) out.push(h('span', { class: 'badge badge-neutral', text: 'Disabled' }));
  if (key.status === 'expired') out.push(h('span', { class: 'badge badge-danger', text: 'Expired' }));
  if (key.status === 'active' && key.expires_at) {
    // "Expires in 3 days" while it is close; a date is clearer than "next month".
    const soon = Date.parse(key.expires_at) - Date.now() < 14 * 86400 * 1000;
    const when = soon ? relativeTime(key.expires_at) : `on ${shortDate(key.expires_at)}`;
    out.push(h('span', { class: `badge ${soon ? 'badge-warning' : 'badge-neutral'}`, title: exactTime(key.expires_at), text: `Expires ${when}` }));
  }
  if (key.rotation_due) {
    out.push(h('span', {
      class: 'badge badge-warning',
      title: "This key's secret is older than the rotation period. Regenerate it and give the integration the new key.",
      text: 'Rotation due',
    }));
  }
  if (key.scopes.length < 4) {
    const label = key.scopes.length === 1 ? 'Scope' : 'Scopes';
    out.push(h('span', { class: 'badge badge-outline', title: 'This key may call only these parts of the API', text: `${label}: ${key.scopes.join(', ') || 'none'}` }));
  }
  return out;
}

function actionButton(iconName, text, label, onClick, extraClass = '') {
  return h(
    'button',
    { type: 'button', class: `btn btn-secondary btn-small ${extraClass}`.trim(), 'aria-label': label, onclick: onClick },
    icon(iconName),
    h('span', { text }),
  );
}

export class KeysView {
  constructor(api, { onForbidden }) {
    this.api = api;
    this.onForbidden = onForbidden;
    this.cursors = [null]; // cursors[i] fetches page i
    this.page = 0;
    this.nextCursor = null;
    this.items = [];
    this.loading = null;
    this.stale = false;
    byId('create-key').addEventListener('click', () => this.create());
    byId('create-first-key').addEventListener('click', () => this.create());
    byId('keys-retry').addEventListener('click', () => this.load());
    byId('page-prev').addEventListener('click', () => this.goTo(this.page - 1));
    byId('page-next').addEventListener('click', () => this.goTo(this.page + 1));
    // Keep "3 minutes ago" true while the page stays open.
    setInterval(() => {
      for (const el of document.querySelectorAll('time.relative-time')) {
        el.textContent = relativeTime(el.getAttribute('datetime'));
      }
    }, 30_000);
  }

  reset() {
    this.cursors = [null];
    this.page = 0;
    this.nextCursor = null;
    this.items = [];
    byId('keys-body').replaceChildren();
  }

  async goTo(page) {
    if (page < 0 || page >= this.cursors.length) return;
    this.page = page;
    await this.load();
  }

  async load() {
    const cursor = this.cursors[this.page];
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (cursor) query.set('cursor', cursor);
    show(byId('keys-error'), false);
    const firstLoad = this.items.length === 0;
    show(byId('keys-loading'), firstLoad);
    if (firstLoad) {
      show(byId('keys-table'), false);
      show(byId('keys-empty'), false);
      show(byId('keys-footer'), false);
    }
    const request = (this.loading = this.api.get(`/v1/keys?${query}`));
    let data;
    try {
      data = await request;
    } catch (error) {
      if (request !== this.loading) return;
      show(byId('keys-loading'), false);
      if (error instanceof ApiError && error.status === 403) {
        this.onForbidden();
        return;
      }
      if (error instanceof ApiError && error.status === 401) return; // signed out already
      byId('keys-error-text').textContent = `Couldn't load your API keys. ${error.message}`;
      show(byId('keys-error'));
      return;
    }
    if (request !== this.loading) return; // a newer load overtook this one
    show(byId('keys-loading'), false);
    if (data.items.length === 0 && this.page > 0) {
      // The last key of a later page was deleted: show the page before it.
      this.cursors.length = this.page;
      this.page -= 1;
      await this.load();
      return;
    }
    this.items = data.items;
    this.nextCursor = data.next_cursor;
    this.cursors.length = this.page + 1;
    if (this.nextCursor) this.cursors.push(this.nextCursor);
    this.render();
  }

  render() {
    const empty = this.items.length === 0;
    show(byId('keys-empty'), empty);
    show(byId('keys-table'), !empty);
    byId('keys-body').replaceChildren(...this.items.map((key) => this.row(key)));
    const paged = this.page > 0 || Boolean(this.nextCursor);
    show(byId('keys-footer'), !empty);
    const first = this.page * PAGE_SIZE + 1;
    const last = this.page * PAGE_SIZE + this.items.length;
    byId('keys-range').textContent = paged
      ? `Keys ${first}–${last}`
      : `${this.items.length} ${this.items.length === 1 ? 'key' : 'keys'}`;
    show(byId('page-prev').parentElement, paged);
    byId('page-prev').disabled = this.page === 0;
    byId('page-next').disabled = !this.nextCursor;
  }

  row(key) {
    return h(
      'tr',
      { 'data-key-id': key.id },
      h(
        'td',
        { class: 'cell-name' },
        h('div', { class: 'key-name', text: key.name }),
        h('div', { class: 'key-meta' }, h('code', { class: 'partial-key', text: key.partial_key }), badges(key)),
      ),
      h('td', { class: 'col-created' }, timeCell(key.created_at, { relative: false })),
      h('td', { class: 'col-used' }, timeCell(key.last_used_at, { emptyText: 'Never', relative: true })),
      h(
        'td',
        { class: 'col-actions' },
        h(
          'div',
          { class: 'actions' },
          actionButton('copy', 'Copy', `Copy the partial key of ${key.name}`, (event) => this.copy(key, event.currentTarget)),
          actionButton('regenerate', 'Regenerate', `Regenerate ${key.name}`, () => this.regenerate(key)),
          actionButton('trash', 'Delete', `Delete ${key.name}`, () => this.remove(key), 'btn-danger-text'),
        ),
      ),
    );
  }

  async copy(key, button) {
    if (await copyText(key.partial_key)) {
      toast(`Copied the partial key ${key.partial_key} to the clipboard.`);
      const label = button.querySelector('span');
      label.textContent = 'Copied';
      button.classList.add('is-copied');
      setTimeout(() => {
        label.textContent = 'Copy';
        button.classList.remove('is-copied');
      }, 2000);
    } else {
      toast(`Your browser did not allow copying. The partial key is ${key.partial_key}.`, { kind: 'error' });
    }
  }

  /** Notes a 404 (someone else deleted the key meanwhile) so the table is refreshed. */
  async gone(request) {
    try {
      return await request;
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        this.stale = true;
        throw new ApiError(404, error.code, 'This key no longer exists: it may have just been deleted by someone else.');
      }
      throw error;
    }
  }

  async reloadIfStale() {
    if (!this.stale) return;
    this.stale = false;
    await this.load();
  }

  async create() {
    const created = await createKeyDialog(this.api);
    if (!created) return;
    const secret = created.key;
    delete created.key;
    this.reset();
    const reload = this.load();
    await revealKey('Your new API key', `“${created.name}” is ready to use.`, secret);
    await reload;
  }

  async regenerate(key) {
    const rolled = await confirmAction({
      title: `Regenerate “${key.name}”?`,
      paragraphs: [
        'A new secret replaces the current one. The current key stops working immediately: every integration that uses it gets “401 invalid API key” errors until you give it the new key.',
        'The key keeps its name, settings and usage history. The new key is shown once.',
      ],
      confirmLabel: 'Regenerate key',
      busyLabel: 'Regenerating…',
      action: () => this.gone(this.api.post(`/v1/keys/${encodeURIComponent(key.id)}/regenerate`)),
    });
    if (!rolled) return this.reloadIfStale();
    const secret = rolled.key;
    delete rolled.key;
    const reload = this.load();
    await revealKey('Your regenerated API key', `“${rolled.name}”: the previous key no longer works.`, secret);
    await reload;
  }

  async remove(key) {
    const deleted = await confirmAction({
      title: `Delete “${key.name}”?`,
      paragraphs: [
        'The key stops working immediately and cannot be restored. Integrations that use it get “401 invalid API key” errors from now on.',
        'Its audit trail is kept.',
      ],
      confirmLabel: 'Delete key',
      busyLabel: 'Deleting…',
      action: () => this.gone(this.api.delete(`/v1/keys/${encodeURIComponent(key.id)}`)),
    });
    if (!deleted) return this.reloadIfStale();
    toast(`Deleted “${key.name}”. It no longer works.`);
    await this.load();
  }
}
