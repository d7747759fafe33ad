// The three dialogs: create a key, show a new key once, confirm a destructive action.

import { ApiError, fieldLabel } from './api.js';
import { byId, clearToasts, copyText, h, icon, show } from './dom.js';

const ALL_SCOPES = ['reports', 'customers', 'data', 'account'];

function closeButtons(dialog) {
  for (const button of dialog.querySelectorAll('[data-close]')) {
    button.addEventListener('click', () => dialog.close());
  }
}

/** An error in words: the API's message, and each offending field by its label. */
function showError(box, error, lead, { allowlist = [] } = {}) {
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

function readCreateForm() {
  const body = { name: byId('create-name').value.trim() };
  const scopes = [...document.querySelectorAll('#create-form input[name="scope"]:checked')].map(
    (box) => box.value,
  );
  if (scopes.length !== ALL_SCOPES.length) body.scopes = scopes;
  const perMinute = byId('create-per-minute').value.trim();
  const perDay = byId('create-per-day').value.trim();
  if (perMinute || perDay) {
    body.rate_limit = {};
    if (perMinute) body.rate_limit.per_minute = Number(perMinute);
    if (perDay) body.rate_limit.per_day = Number(perDay);
  }
  const allowlist = byId('create-allowlist')
    .value.split(/[\s,]+/)
    .filter(Boolean);
  if (allowlist.length) body.ip_allowlist = allowlist;
  const expires = byId('create-expires').value;
  if (expires) body.expires_at = new Date(expires).toISOString();
  return { body, allowlist, scopes };
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
  const now = new Date(Date.now() - new Date().getTimezoneOffset() * 60000);
  byId('create-expires').min = now.toISOString().slice(0, 16);

  return new Promise((resolve) => {
    let created = null;
    const onSubmit = async (event) => {
      event.preventDefault();
      const { body, allowlist, scopes } = readCreateForm();
      if (!body.name) {
        name.setAttribute('aria-invalid', 'true');
        showError(errorBox, new Error('Give the key a name that says where it is used.'), 'A name is needed.');
        name.focus();
        return;
      }
      if (!scopes.length) {
        showError(errorBox, new Error('Choose at least one scope, or the key cannot call anything.'), 'No scope chosen.');
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
  });
}

// -- The new key, shown once -------------------------------------------------------------

/**
 * Show a full key until Done. The key is held in this one variable and the one text node;
 * both are emptied when the dialog closes, so nothing on the page keeps it afterwards.
 */
export function revealKey(title, subtitle, key) {
  const dialog = byId('secret-dialog');
  const value = byId('secret-value');
  const copy = byId('secret-copy');
  const label = copy.querySelector('.label');
  let secret = key;
  byId('secret-title').textContent = title;
  byId('secret-subtitle').textContent = subtitle;
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
