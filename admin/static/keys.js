// The key table: list (cursor pagination), copy the partial key, edit, usage, regenerate
// (with a grace period), delete, create. The rows are refreshed in place while the page is
// open (name, partial key, badges, "Last used"): every 15 seconds and when the tab comes
// back into view.

import { ApiError } from './api.js';
import { confirmAction, createKeyDialog, editKeyDialog, revealKey } from './dialogs.js';
import { byId, copyText, h, icon, show, toast } from './dom.js';
import { exactTime, relativeTime, shortDate } from './format.js';
import { permissionChoices } from './permissions.js';

export const PAGE_SIZE = 20;
export const REFRESH_MS = 15_000;

// The regenerate dialog's choices: how long the old secret keeps working.
const GRACE = [
  [0, 'None: the old key stops working now'],
  [3600, '1 hour'],
  [86400, '24 hours'],
  [7 * 86400, '7 days'],
];

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

// How many permissions the route table defines (null until known): a key with fewer gets
// a badge naming the ones it has.
let allPermissions = null;

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
  const granted = key.permissions ?? [];
  if (allPermissions !== null && granted.length < allPermissions) {
    const label = granted.length === 1 ? 'Permission' : 'Permissions';
    out.push(h('span', { class: 'badge badge-outline', title: 'This key may call only these parts of the API', text: `${label}: ${granted.join(', ') || 'none'}` }));
  }
  return out;
}

// The row buttons' names for assistive technology, with the key's name: built with the
// row and kept current by refresh() when the key is renamed elsewhere.
const ACTION_LABELS = {
  Copy: (name) => `Copy the partial key of ${name}`,
  Edit: (name) => `Edit ${name}`,
  Usage: (name) => `Usage of ${name}`,
  Regenerate: (name) => `Regenerate ${name}`,
  Delete: (name) => `Delete ${name}`,
};

// Icon and label; at 390 px only the icon shows, so the title gives the words on hover and
// the aria-label names it (with the key) for assistive technology.
function actionButton(iconName, text, key, onClick, extraClass = '') {
  return h(
    'button',
    { type: 'button', class: `btn btn-secondary btn-small ${extraClass}`.trim(), 'aria-label': ACTION_LABELS[text](key.name), title: text, 'data-action': text, onclick: onClick },
    icon(iconName),
    h('span', { class: 'label', text }),
  );
}

function graceChoice() {
  return h(
    'fieldset',
    { class: 'fieldset grace' },
    h('legend', { class: 'field-label', text: 'Keep the old key working for' }),
    GRACE.map(([seconds, text], index) =>
      h(
        'label',
        { class: 'radio' },
        h('input', { type: 'radio', name: 'grace', value: String(seconds), checked: index === 0 }),
        h('span', { text }),
      ),
    ),
    h('p', { class: 'field-hint', text: 'A grace period lets you update the integration before the old key stops working.' }),
  );
}

const GRACE_WORDS = { 3600: '1 h', 86400: '24 h', [7 * 86400]: '7 d' };

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
    this.onUsage = () => {};
    // "Last used" from the API every 15 s and when the tab is shown again; "3 minutes
    // ago" recomputed in between.
    setInterval(() => this.refresh(), REFRESH_MS);
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') this.refresh();
    });
    window.addEventListener('focus', () => this.refresh());
    setInterval(() => {
      for (const el of document.querySelectorAll('time.relative-time')) {
        el.textContent = relativeTime(el.getAttribute('datetime'));
      }
    }, 30_000);
  }

  /**
   * Update the rows on screen from the API without rebuilding them: the cells whose
   * content changed are replaced, so scroll position, focus and hover stay where they are.
   * The row buttons act on this.items at click time (see row()), so they follow too.
   * A different set of keys (added or deleted elsewhere) rebuilds the table.
   */
  async refresh() {
    if (byId('view-keys').hidden || this.loading === null || document.querySelector('dialog[open]')) return;
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    const cursor = this.cursors[this.page];
    if (cursor) query.set('cursor', cursor);
    const started = this.loading;
    let data;
    try {
      data = await this.api.get(`/v1/keys?${query}`);
    } catch {
      return; // the next tick tries again; a signed-out session is handled by the API client
    }
    if (started !== this.loading || byId('view-keys').hidden) return; // a navigation overtook it
    const same = data.items.length === this.items.length && data.items.every((key, i) => key.id === this.items[i].id);
    this.items = data.items;
    this.nextCursor = data.next_cursor;
    if (!same) {
      this.render();
      return;
    }
    for (const key of data.items) {
      const row = byId('keys-body').querySelector(`tr[data-key-id="${CSS.escape(key.id)}"]`);
      if (!row) continue;
      const used = row.querySelector('.col-used');
      const before = used.querySelector('time')?.getAttribute('datetime') ?? null;
      if (before !== key.last_used_at) used.replaceChildren(timeCell(key.last_used_at, { emptyText: 'Never', relative: true }));
      const name = row.querySelector('.key-name');
      if (name.textContent !== key.name) name.textContent = key.name;
      const partial = row.querySelector('.partial-key');
      if (partial.textContent !== key.partial_key) partial.textContent = key.partial_key;
      for (const button of row.querySelectorAll('.actions button[data-action]')) {
        const label = ACTION_LABELS[button.dataset.action](key.name);
        if (button.getAttribute('aria-label') !== label) button.setAttribute('aria-label', label);
      }
      const meta = row.querySelector('.key-meta');
      const fresh = h('div', null, badges(key));
      const old = [...meta.querySelectorAll('.badge')].map((b) => b.textContent).join('|');
      if (old !== [...fresh.children].map((b) => b.textContent).join('|')) {
        meta.replaceChildren(meta.querySelector('.partial-key'), ...fresh.children);
      }
    }
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
    if (allPermissions === null) {
      allPermissions = await permissionChoices(this.api).then((p) => p.choices.length, () => null);
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
    // The key as last loaded, not as this row was built: refresh() keeps the row and
    // replaces this.items when someone else renames, regenerates or disables the key, and
    // Edit must start from (and compare with) what the key is now.
    const current = () => this.items.find((k) => k.id === key.id) ?? key;
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
          actionButton('copy', 'Copy', key, (event) => this.copy(current(), event.currentTarget)),
          actionButton('edit', 'Edit', key, () => this.edit(current())),
          actionButton('chart', 'Usage', key, () => this.onUsage(current())),
          actionButton('regenerate', 'Regenerate', key, () => this.regenerate(current())),
          actionButton('trash', 'Delete', key, () => this.remove(current()), 'btn-danger-text'),
        ),
      ),
    );
  }

  async copy(key, button) {
    if (await copyText(key.partial_key)) {
      toast(`Copied the partial key ${key.partial_key} to the clipboard.`);
      const label = button.querySelector('.label');
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

  async edit(key) {
    const saved = await editKeyDialog(this.api, key).catch((error) => {
      toast(error.message, { kind: 'error' });
      return null;
    });
    if (!saved) return;
    toast(`Saved “${saved.name}”.`);
    await this.load();
  }

  async regenerate(key) {
    const choice = graceChoice();
    const rolled = await confirmAction({
      title: `Regenerate “${key.name}”?`,
      paragraphs: [
        'A new secret replaces the current one. Without a grace period the current key stops working immediately: every integration that uses it gets “401 invalid API key” errors until you give it the new key.',
        choice,
        'The key keeps its name, settings and usage history. The new key is shown once.',
      ],
      confirmLabel: 'Regenerate key',
      busyLabel: 'Regenerating…',
      action: () => {
        const grace = Number(choice.querySelector('input[name="grace"]:checked').value);
        const body = grace ? { grace_seconds: grace } : undefined;
        return this.gone(this.api.post(`/v1/keys/${encodeURIComponent(key.id)}/regenerate`, body)).then((made) => ({ ...made, grace }));
      },
    });
    if (!rolled) return this.reloadIfStale();
    const secret = rolled.key;
    delete rolled.key;
    const reload = this.load();
    let subtitle = `“${rolled.name}”: the previous key no longer works.`;
    if (rolled.grace) {
      const until = new Date(Date.now() + rolled.grace * 1000).toISOString();
      subtitle = `“${rolled.name}”: old secret accepted until ${exactTime(until)} (${GRACE_WORDS[rolled.grace]} grace).`;
    }
    await revealKey('Your regenerated API key', subtitle, secret);
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
