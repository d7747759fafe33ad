// Members: who manages the account, with which role and when they last changed something
// (their newest audit event). Owners add members (the token shown once), change roles,
// remove members and regenerate their own token; Admins see the list without controls.
// The API keeps the last Owner; the page says so before anyone tries.

import { ApiError } from './api.js';
import { closeButtons, confirmAction, revealKey, showError } from './dialogs.js';
import { byId, clearToasts, h, icon, show, toast } from './dom.js';
import { exactTime, relativeTime } from './format.js';
import { keepToken } from './session.js';

export const ROLE_NAMES = { owner: 'Owner', admin: 'Admin', readonly: 'Read-only' };
const LAST_OWNER = 'The last Owner: an account always keeps one. Add another Owner first.';

export class MembersView {
  constructor(api) {
    this.api = api;
    this.me = null;
    this.items = [];
    this.dialogReady = false;
    byId('add-member').addEventListener('click', () => this.add());
  }

  reset() {
    this.items = [];
    byId('members-body').replaceChildren();
  }

  get canManage() {
    return this.me?.role === 'owner';
  }

  async load(me) {
    this.me = me;
    show(byId('add-member'), this.canManage);
    show(byId('members-readonly'), !this.canManage);
    show(byId('members-error'), false);
    try {
      const data = await this.api.get('/v1/members?limit=100');
      this.items = data.items;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return;
      byId('members-error').textContent = `Couldn't load the members. ${error.message}`;
      show(byId('members-error'));
      return;
    }
    this.render();
    await this.fillActivity();
  }

  /** "Last activity": the member's newest audit event (one small request each). */
  async fillActivity() {
    await Promise.all(
      this.items.map(async (member) => {
        try {
          const log = await this.api.get(`/v1/audit-log?limit=1&actor=${encodeURIComponent(member.id)}`);
          const cell = byId('members-body').querySelector(`tr[data-member-id="${CSS.escape(member.id)}"] .col-used`);
          const at = log.items[0]?.at;
          if (cell) {
            cell.replaceChildren(at ? h('time', { datetime: at, title: exactTime(at), class: 'relative-time', text: relativeTime(at) }) : h('span', { class: 'muted', text: 'No changes yet' }));
          }
        } catch {
          // leave "…": the list itself is what matters
        }
      }),
    );
  }

  owners() {
    return this.items.filter((m) => m.role === 'owner').length;
  }

  render() {
    byId('members-body').replaceChildren(...this.items.map((member) => this.row(member)));
  }

  row(member) {
    const self = member.id === this.me?.id;
    const lastOwner = member.role === 'owner' && this.owners() <= 1;
    const who = h(
      'td',
      { class: 'cell-name' },
      h('div', { class: 'key-name' }, member.name || member.email, self ? h('span', { class: 'badge badge-outline you', text: 'You' }) : null),
      member.name ? h('div', { class: 'key-meta muted', text: member.email }) : null,
    );
    let role;
    if (this.canManage) {
      const select = h(
        'select',
        { class: 'input select select-small', 'aria-label': `Role of ${member.name || member.email}`, disabled: lastOwner, title: lastOwner ? LAST_OWNER : null },
        Object.entries(ROLE_NAMES).map(([value, text]) => h('option', { value, text, selected: value === member.role })),
      );
      select.addEventListener('change', () => this.changeRole(member, select));
      role = h('td', null, select, lastOwner ? h('div', { class: 'field-hint', text: 'Last Owner' }) : null);
    } else {
      role = h('td', null, h('span', { class: 'badge badge-neutral', text: ROLE_NAMES[member.role] ?? member.role }));
    }
    const actions = [];
    if (this.canManage && self) {
      actions.push(this.button('regenerate', 'Regenerate my token', 'Regenerate my token', () => this.regenerateOwn(member)));
    }
    if (this.canManage) {
      const remove = this.button('trash', 'Remove', `Remove ${member.name || member.email}`, () => this.remove(member), 'btn-danger-text');
      if (lastOwner) {
        remove.disabled = true;
        remove.title = LAST_OWNER;
      }
      actions.push(remove);
    }
    return h(
      'tr',
      { 'data-member-id': member.id },
      who,
      role,
      h('td', { class: 'col-used' }, h('span', { class: 'muted', text: '…' })),
      h('td', { class: 'col-actions' }, h('div', { class: 'actions' }, actions)),
    );
  }

  button(iconName, text, label, onClick, extra = '') {
    return h(
      'button',
      { type: 'button', class: `btn btn-secondary btn-small ${extra}`.trim(), 'aria-label': label, title: text, onclick: onClick },
      icon(iconName),
      h('span', { class: 'label', text }),
    );
  }

  async changeRole(member, select) {
    const role = select.value;
    select.disabled = true;
    try {
      await this.api.patch(`/v1/members/${encodeURIComponent(member.id)}`, { role });
      toast(`${member.name || member.email} is now ${ROLE_NAMES[role]}.`);
      if (member.id === this.me.id && role !== 'owner') {
        window.location.reload(); // the page's own controls depend on the role just given up
        return;
      }
    } catch (error) {
      select.value = member.role;
      toast(error.message, { kind: 'error' });
    } finally {
      select.disabled = false;
    }
    await this.load(this.me);
  }

  async remove(member) {
    const who = member.name || member.email;
    const removed = await confirmAction({
      title: `Remove ${who}?`,
      paragraphs: [`${who}'s admin token stops working immediately. Their past changes stay in the audit log.`],
      confirmLabel: 'Remove member',
      busyLabel: 'Removing…',
      action: () => this.api.delete(`/v1/members/${encodeURIComponent(member.id)}`),
    });
    if (!removed) return;
    toast(`Removed ${who}.`);
    await this.load(this.me);
  }

  async regenerateOwn(member) {
    const rolled = await confirmAction({
      title: 'Regenerate your admin token?',
      paragraphs: [
        'Your current token stops working immediately, here and wherever else you use it. This page switches to the new one by itself.',
        'The new token is shown once.',
      ],
      confirmLabel: 'Regenerate token',
      busyLabel: 'Regenerating…',
      action: () => this.api.post(`/v1/members/${encodeURIComponent(member.id)}/regenerate-token`),
    });
    if (!rolled) return;
    keepToken(rolled.token);
    const token = rolled.token;
    delete rolled.token;
    await revealKey('Your new admin token', 'Your previous token no longer works.', token, { token: true });
    await this.load(this.me);
  }

  add() {
    const dialog = byId('member-dialog');
    const form = byId('member-form');
    const submit = byId('member-submit');
    const errorBox = byId('member-error');
    if (!this.dialogReady) {
      closeButtons(dialog);
      this.dialogReady = true;
    }
    form.reset();
    show(errorBox, false);
    return new Promise((resolve) => {
      let made = null;
      const onSubmit = async (event) => {
        event.preventDefault();
        const body = { email: byId('member-email').value.trim(), role: byId('member-role').value };
        const name = byId('member-name').value.trim();
        if (name) body.name = name;
        if (!body.email) {
          showError(errorBox, new Error('Enter the email address of the person to add.'), 'An email is needed.');
          byId('member-email').focus();
          return;
        }
        submit.disabled = true;
        try {
          made = await this.api.post('/v1/members', body);
          dialog.close();
        } catch (error) {
          showError(errorBox, error, "Couldn't add the member.");
        } finally {
          submit.disabled = false;
        }
      };
      const onClose = async () => {
        form.removeEventListener('submit', onSubmit);
        dialog.removeEventListener('close', onClose);
        if (made) {
          const token = made.token;
          delete made.token;
          const reload = this.load(this.me);
          await revealKey(`${made.name || made.email}'s admin token`, `${ROLE_NAMES[made.role]} of this account. Give it to them; it is shown once.`, token, { token: true });
          await reload;
        }
        resolve(made);
      };
      form.addEventListener('submit', onSubmit);
      dialog.addEventListener('close', onClose);
      clearToasts();
      dialog.showModal();
      byId('member-email').focus();
    });
  }
}
