// The dialogs: create and edit a key, show a new secret once, confirm a destructive action.

import { ApiError, fieldLabel } from './api.js';
import { byId, clearToasts, copyText, h, icon, show } from './dom.js';
import { permissionChoices, readPermissions, renderPermissions } from './permissions.js';

export function closeButtons(dialog) {
  for (const button of dialog.querySelectorAll('[data-close]')) {
    button.addEventListener('click', () => dialog.close());
  }
}

/** An error in words: the API's message, and each offending field by its label. */
export function showError(box, error, lead, { allowlist = [] } = {}) {
  const message = error instanceof ApiError ? error.message : String(error.message ?? error);
  const fields = error instanceof ApiError ? error.fields : [];
  const items = fields.map(({ field, message: problem }) => {
    let text = String(problem);
    // "entry 2: not an IP address or CIDR" names the line the person typed instead.
    const entry = /^entry (\d+): (.*)$/.exec(text);
    if (field === 'ip_allowlist' && entry && allowlist[Number(entry[1])] !== undefined) {
      text = `“${allowlist[Number(entry[1])]}”: ${entry[2]}`;
    }
    return h('li', null, h('strong', { text: `${fieldLabel(field)}: ` }), text);
  });
  box.replaceChildren(
    h('span', { class: 'alert-icon' }, icon('alert')),
    h(
      'div',
      { class: 'alert-text' },
      h('p', null, h('strong', { text: lead }), ' ', items.length ? 'Please fix:' : message),
      items.length ? h('ul', { class: 'error-list' }, items) : null,
    ),
  );
  show(box);
  box.scrollIntoView({ block: 'nearest' });
}

// -- Create ------------------------------------------------------------------------------

let createDialogReady = false;

function readLimits(prefix, body, { clear = false } = {}) {
  const perMinute = byId(`${prefix}-per-minute`).value.trim();
  const perDay = byId(`${prefix}-per-day`).value.trim();
  if (perMinute || perDay || clear) {
    body.rate_limit = {};
    if (perMinute || clear) body.rate_limit.per_minute = perMinute ? Number(perMinute) : null;
    if (perDay || clear) body.rate_limit.per_day = perDay ? Number(perDay) : null;
  }
}

function readAllowlist(id) {
  return byId(id).value.split(/[\s,]+/).filter(Boolean);
}

/** A datetime-local value ("2026-12-24T18:00", the browser's zone) from an RFC 3339 time. */
function localInput(iso) {
  if (!iso) return '';
  const date = new Date(iso);
  return new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

function readCreateForm(permissions) {
  const body = { name: byId('create-name').value.trim() };
  const granted = readPermissions(byId('create-permissions'));
  if (granted.length !== permissions.choices.length) body[permissions.field] = granted;
  readLimits('create', body);
  const allowlist = readAllowlist('create-allowlist');
  if (allowlist.length) body.ip_allowlist = allowlist;
  const expires = byId('create-expires').value;
  if (expires) body.expires_at = new Date(expires).toISOString();
  return { body, allowlist, granted };
}

function resetCreateForm() {
  byId('create-form').reset();
  byId('create-advanced').open = false;
  show(byId('create-error'), false);
  byId('create-name').removeAttribute('aria-invalid');
}

/** Ask for a name (and the advanced settings) and create the key; null if cancelled. */
export function createKeyDialog(api) {
  const dialog = byId('create-dialog');
  const form = byId('create-form');
  const name = byId('create-name');
  const submit = byId('create-submit');
  const errorBox = byId('create-error');
  if (!createDialogReady) {
    closeButtons(dialog);
    for (const chip of byId('create-suggestions').querySelectorAll('button')) {
      chip.addEventListener('click', () => {
        name.value = chip.textContent;
        name.focus();
      });
    }
    createDialogReady = true;
  }
  resetCreateForm();
  byId('create-expires').min = localInput(new Date().toISOString());

  return permissionChoices(api).then((permissions) => new Promise((resolve) => {
    renderPermissions(byId('create-permissions'), permissions, permissions.choices.map((c) => c.value));
    let created = null;
    const onSubmit = async (event) => {
      event.preventDefault();
      const { body, allowlist, granted } = readCreateForm(permissions);
      if (!body.name) {
        name.setAttribute('aria-invalid', 'true');
        showError(errorBox, new Error('Give the key a name that says where it is used.'), 'A name is needed.');
        name.focus();
        return;
      }
      if (!granted.length) {
        showError(errorBox, new Error('Choose at least one permission, or the key cannot call anything.'), 'No permission chosen.');
        return;
      }
      name.removeAttribute('aria-invalid');
      submit.disabled = true;
      submit.textContent = 'Creating…';
      try {
        created = await api.post('/v1/keys', body);
        dialog.close();
      } catch (error) {
        showError(errorBox, error, "Couldn't create the key.", { allowlist });
      } finally {
        submit.disabled = false;
        submit.textContent = 'Create key';
      }
    };
    const onClose = () => {
      form.removeEventListener('submit', onSubmit);
      dialog.removeEventListener('close', onClose);
      resetCreateForm();
      resolve(created);
    };
    form.addEventListener('submit', onSubmit);
    dialog.addEventListener('close', onClose);
    clearToasts();
    dialog.showModal();
    name.focus();
  }));
}

// -- Edit --------------------------------------------------------------------------------

let editDialogReady = false;

/**
 * Edit a key in place: only the fields that changed are sent, and the API's validation
 * messages are shown beside the form. `onToggle` disables or enables the key at once.
 * Resolves with the updated key, or null when nothing was saved.
 */
export async function editKeyDialog(api, key) {
  const dialog = byId('edit-dialog');
  const form = byId('edit-form');
  const name = byId('edit-name');
  const submit = byId('edit-submit');
  const toggle = byId('edit-toggle');
  const errorBox = byId('edit-error');
  if (!editDialogReady) {
    closeButtons(dialog);
    editDialogReady = true;
  }
  const permissions = await permissionChoices(api);
  let current = key;
  const fill = () => {
    byId('edit-title').textContent = `Edit “${current.name}”`;
    const enabled = current.enabled;
    byId('edit-status').textContent = enabled
      ? 'This key is enabled: requests with it are accepted.'
      : 'This key is disabled: requests with it get 401 until it is enabled again.';
    toggle.textContent = enabled ? 'Disable key' : 'Enable key';
    toggle.classList.toggle('btn-danger-text', enabled);
    toggle.hidden = !enabled && Boolean(current.leaked_at); // a leaked key is regenerated, not re-enabled
  };
  fill();
  name.value = key.name;
  renderPermissions(byId('edit-permissions'), permissions, key[permissions.field] ?? []);
  byId('edit-per-minute').value = key.rate_limit?.per_minute ?? '';
  byId('edit-per-day').value = key.rate_limit?.per_day ?? '';
  byId('edit-allowlist').value = (key.ip_allowlist ?? []).join('\n');
  byId('edit-expires').value = localInput(key.expires_at);
  byId('edit-expires').min = localInput(new Date().toISOString());
  show(errorBox, false);
  name.removeAttribute('aria-invalid');

  return new Promise((resolve) => {
    let saved = null;
    const path = `/v1/keys/${encodeURIComponent(key.id)}`;
    const changes = () => {
      const body = {};
      const newName = name.value.trim();
      if (newName !== key.name) body.name = newName;
      const granted = readPermissions(byId('edit-permissions'));
      const before = [...(key[permissions.field] ?? [])].sort();
      if (JSON.stringify([...granted].sort()) !== JSON.stringify(before)) body[permissions.field] = granted;
      const limits = {};
      for (const [field, id] of [['per_minute', 'edit-per-minute'], ['per_day', 'edit-per-day']]) {
        const raw = byId(id).value.trim();
        const value = raw === '' ? null : Number(raw);
        if (value !== (key.rate_limit?.[field] ?? null)) limits[field] = value;
      }
      if (Object.keys(limits).length) body.rate_limit = limits;
      const allowlist = readAllowlist('edit-allowlist');
      if (JSON.stringify(allowlist) !== JSON.stringify(key.ip_allowlist ?? [])) body.ip_allowlist = allowlist;
      const expires = byId('edit-expires').value;
      if (expires !== localInput(key.expires_at)) body.expires_at = expires ? new Date(expires).toISOString() : null;
      return { body, allowlist };
    };
    const onSubmit = async (event) => {
      event.preventDefault();
      const { body, allowlist } = changes();
      if ('name' in body && !body.name) {
        name.setAttribute('aria-invalid', 'true');
        showError(errorBox, new Error('Give the key a name that says where it is used.'), 'A name is needed.');
        name.focus();
        return;
      }
      if (Object.keys(body).length === 0) {
        dialog.close();
        return;
      }
      name.removeAttribute('aria-invalid');
      submit.disabled = true;
      submit.textContent = 'Saving…';
      try {
        saved = await api.patch(path, body);
        dialog.close();
      } catch (error) {
        showError(errorBox, error, "Couldn't save the changes.", { allowlist });
      } finally {
        submit.disabled = false;
        submit.textContent = 'Save changes';
      }
    };
    const onToggle = async () => {
      toggle.disabled = true;
      try {
        current = await api.patch(path, { enabled: !current.enabled });
        saved = current;
        key = { ...key, enabled: current.enabled, status: current.status };
        fill();
        show(errorBox, false);
      } catch (error) {
        showError(errorBox, error, current.enabled ? "Couldn't disable the key." : "Couldn't enable the key.");
      } finally {
        toggle.disabled = false;
        toggle.focus();
      }
    };
    const onClose = () => {
      form.removeEventListener('submit', onSubmit);
      toggle.removeEventListener('click', onToggle);
      dialog.removeEventListener('close', onClose);
      resolve(saved);
    };
    form.addEventListener('submit', onSubmit);
    toggle.addEventListener('click', onToggle);
    dialog.addEventListener('close', onClose);
    clearToasts();
    dialog.showModal();
    name.focus();
  });
}

// -- The new key, shown once -------------------------------------------------------------

/**
 * Show a full key until Done. The key is held in this one variable and the one text node;
 * both are emptied when the dialog closes, so nothing on the page keeps it afterwards.
 */
const TOKEN_TEXTS = {
  lead: 'Copy this admin token now and give it to its member over a safe channel (a password manager share, not email or chat).',
  warning: "This token can't be shown again. If it is lost, an Owner regenerates it.",
  hint: 'The member pastes it on this page to sign in, or sends it to the admin API as Authorization: Bearer <token>.',
};
let keyTexts = null;

export function revealKey(title, subtitle, key, { token = false } = {}) {
  const dialog = byId('secret-dialog');
  const value = byId('secret-value');
  const copy = byId('secret-copy');
  const label = copy.querySelector('.label');
  let secret = key;
  byId('secret-title').textContent = title;
  byId('secret-subtitle').textContent = subtitle;
  // Keys and members' admin tokens share the dialog; only its words differ.
  keyTexts ??= Object.fromEntries(['lead', 'warning', 'hint'].map((part) => [part, [...byId(`secret-${part}`).childNodes]]));
  for (const part of ['lead', 'warning', 'hint']) {
    if (token) byId(`secret-${part}`).textContent = TOKEN_TEXTS[part];
    else byId(`secret-${part}`).replaceChildren(...keyTexts[part]);
  }
  value.textContent = secret;
  label.textContent = 'Copy';
  copy.classList.remove('is-copied');

  return new Promise((resolve) => {
    const onCopy = async () => {
      if (secret === null) return;
      if (await copyText(secret)) {
        label.textContent = 'Copied';
        copy.classList.add('is-copied');
      } else {
        // Select it so that Ctrl+C / ⌘C works.
        getSelection().selectAllChildren(value);
        label.textContent = 'Press Ctrl+C';
      }
    };
    const wipe = () => {
      secret = null;
      value.textContent = '';
      getSelection().removeAllRanges();
    };
    const onDone = () => {
      wipe(); // now, not when the (asynchronous) close event comes
      dialog.close();
    };
    // Escape would lose the key by accident: only Done closes (the browser may still
    // insist on a second Escape, and then the close handler below clears up all the same).
    const onCancel = (event) => event.preventDefault();
    const onClose = () => {
      wipe();
      copy.removeEventListener('click', onCopy);
      byId('secret-done').removeEventListener('click', onDone);
      dialog.removeEventListener('cancel', onCancel);
      dialog.removeEventListener('close', onClose);
      resolve();
    };
    copy.addEventListener('click', onCopy);
    byId('secret-done').addEventListener('click', onDone);
    dialog.addEventListener('cancel', onCancel);
    dialog.addEventListener('close', onClose);
    clearToasts();
    dialog.showModal();
    copy.focus();
  });
}

// -- Confirmation ------------------------------------------------------------------------

/**
 * Ask before a destructive action, run it with the dialog still open (errors are shown
 * in it), and resolve with its result, or null when cancelled.
 */
export function confirmAction({ title, paragraphs, confirmLabel, busyLabel, action }) {
  const dialog = byId('confirm-dialog');
  const ok = byId('confirm-ok');
  const cancel = byId('confirm-cancel');
  const errorBox = byId('confirm-error');
  byId('confirm-title').textContent = title;
  byId('confirm-body').replaceChildren(
    ...paragraphs.map((text) => (text instanceof Node ? text : h('p', { text }))),
  );
  ok.textContent = confirmLabel;
  ok.disabled = false;
  show(errorBox, false);

  return new Promise((resolve) => {
    let result = null;
    let busy = false;
    const onOk = async () => {
      busy = true;
      ok.disabled = true;
      cancel.disabled = true;
      ok.textContent = busyLabel;
      try {
        result = (await action()) ?? true;
        dialog.close();
      } catch (error) {
        showError(errorBox, error, `Couldn't ${confirmLabel.toLowerCase()}.`);
        ok.textContent = confirmLabel;
        ok.disabled = false;
      } finally {
        busy = false;
        cancel.disabled = false;
      }
    };
    const onCancelClick = () => dialog.close();
    const onCancel = (event) => {
      if (busy) event.preventDefault();
    };
    const onClose = () => {
      ok.removeEventListener('click', onOk);
      cancel.removeEventListener('click', onCancelClick);
      dialog.removeEventListener('cancel', onCancel);
      dialog.removeEventListener('close', onClose);
      resolve(result);
    };
    ok.addEventListener('click', onOk);
    cancel.addEventListener('click', onCancelClick);
    dialog.addEventListener('cancel', onCancel);
    dialog.addEventListener('close', onClose);
    clearToasts();
    dialog.showModal();
    cancel.focus();
  });
}
