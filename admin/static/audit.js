// The audit log as sentences ("Ana regenerated 'Zapier automation' with a 24 h grace"),
// newest first, filtered by who, what and which key, a page at a time (cursor paging).

import { ApiError } from './api.js';
import { byId, h, show } from './dom.js';
import { exactTime, relativeTime } from './format.js';
import { ROLE_NAMES } from './members.js';

export const PAGE_SIZE = 25;

export const ACTIONS = {
  'key.create': 'Key created',
  'key.update': 'Key changed',
  'key.regenerate': 'Key regenerated',
  'key.delete': 'Key deleted',
  'key.leaked': 'Key leaked',
  'member.create': 'Member added',
  'member.update': 'Member changed',
  'member.delete': 'Member removed',
  'member.regenerate_token': 'Member token regenerated',
  'webhook.create': 'Webhook added',
  'webhook.update': 'Webhook changed',
  'webhook.delete': 'Webhook deleted',
  'webhook.rotate_secret': 'Webhook secret rotated',
  'webhook.resend': 'Webhook delivery resent',
  'account.create': 'Account created',
};

function duration(seconds) {
  // As the regenerate dialog offers them: 1 h, 24 h, 7 d.
  if (seconds > 86400 && seconds % 86400 === 0) return `${seconds / 86400} d`;
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}

function list(words) {
  if (words.length <= 1) return words.join('');
  return `${words.slice(0, -1).join(', ')} and ${words[words.length - 1]}`;
}

/** What a key.update changed, in words. */
function keyChanges(changes = {}) {
  const words = [];
  for (const [field, value] of Object.entries(changes)) {
    if (field === 'enabled') words.push(value ? 'enabled it' : 'disabled it');
    else if (field === 'name') words.push(`renamed it to ‘${value}’`);
    else if (field === 'scopes' || field === 'permissions') words.push(`set its permissions to ${value.length ? value.join(', ') : 'none'}`);
    else if (field === 'rate_limit_per_minute') words.push(value === null ? 'reset its per-minute limit' : `set its limit to ${value} a minute`);
    else if (field === 'rate_limit_per_day') words.push(value === null ? 'reset its daily limit' : `set its limit to ${value} a day`);
    else if (field === 'ip_allowlist') words.push(value.length ? `limited it to ${value.join(', ')}` : 'removed its IP allowlist');
    else if (field === 'expires_at') words.push(value ? `made it expire ${exactTime(value)}` : 'removed its expiry');
    else words.push(`changed its ${field}`);
  }
  return list(words);
}

export class AuditView {
  constructor(api) {
    this.api = api;
    this.cursors = [null];
    this.page = 0;
    this.members = new Map();
    this.keys = new Map();
    for (const id of ['audit-actor', 'audit-action', 'audit-key']) {
      byId(id).addEventListener('change', () => {
        this.cursors = [null];
        this.page = 0;
        this.load();
      });
    }
    byId('audit-prev').addEventListener('click', () => this.goTo(this.page - 1));
    byId('audit-next').addEventListener('click', () => this.goTo(this.page + 1));
    byId('audit-action').append(...Object.entries(ACTIONS).map(([value, text]) => h('option', { value, text })));
  }

  reset() {
    this.cursors = [null];
    this.page = 0;
    byId('audit-list').replaceChildren();
  }

  /** Names for the ids in the log: members and keys (deleted keys fall back to the log). */
  async names() {
    const [members, keys] = await Promise.all([
      this.api.get('/v1/members?limit=100').catch(() => ({ items: [] })),
      this.api.get('/v1/keys?limit=100').catch(() => ({ items: [] })),
    ]);
    this.members = new Map(members.items.map((m) => [m.id, m]));
    this.keys = new Map(keys.items.map((k) => [k.id, k]));
    const actor = byId('audit-actor');
    const chosenActor = actor.value;
    actor.replaceChildren(h('option', { value: '', text: 'Anyone' }), ...members.items.map((m) => h('option', { value: m.id, text: m.name || m.email })));
    actor.value = chosenActor;
    const key = byId('audit-key');
    const chosenKey = key.value;
    key.replaceChildren(h('option', { value: '', text: 'Any key' }), ...keys.items.map((k) => h('option', { value: k.id, text: k.name })));
    key.value = chosenKey;
  }

  /**
   * Entering the page: the names are read again each time, as keys and members come and
   * go elsewhere (names kept from an earlier visit showed a new key as "a deleted key").
   */
  async open() {
    await this.names();
    await this.load();
  }

  async goTo(page) {
    if (page < 0 || page >= this.cursors.length) return;
    this.page = page;
    await this.load();
  }

  async load() {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    for (const [param, id] of [['actor', 'audit-actor'], ['action', 'audit-action'], ['key', 'audit-key']]) {
      if (byId(id).value) query.set(param, byId(id).value);
    }
    const cursor = this.cursors[this.page];
    if (cursor) query.set('cursor', cursor);
    show(byId('audit-error'), false);
    const request = (this.loading = this.api.get(`/v1/audit-log?${query}`));
    let data;
    try {
      data = await request;
    } catch (error) {
      if (request !== this.loading || (error instanceof ApiError && error.status === 401)) return;
      byId('audit-error').textContent = `Couldn't load the audit log. ${error.message}`;
      show(byId('audit-error'));
      return;
    }
    if (request !== this.loading) return;
    this.cursors.length = this.page + 1;
    if (data.next_cursor) this.cursors.push(data.next_cursor);
    byId('audit-list').replaceChildren(...data.items.map((event) => this.entry(event)));
    show(byId('audit-empty'), data.items.length === 0);
    const first = this.page * PAGE_SIZE + 1;
    byId('audit-range').textContent = data.items.length ? `Events ${first}–${first + data.items.length - 1}` : '';
    byId('audit-prev').disabled = this.page === 0;
    byId('audit-next').disabled = !data.next_cursor;
  }

  actor(event) {
    if (event.actor.type === 'operator') return 'The operator';
    if (event.actor.type === 'system') return 'The gateway';
    const member = this.members.get(event.actor.id);
    return member ? member.name || member.email : 'A former member';
  }

  keyName(event) {
    const key = this.keys.get(event.target.id);
    return `‘${key?.name ?? event.details?.name ?? 'a deleted key'}’`;
  }

  memberName(event) {
    const member = this.members.get(event.target.id);
    return member ? member.name || member.email : event.details?.email ?? 'a former member';
  }

  sentence(event) {
    const who = this.actor(event);
    const d = event.details ?? {};
    switch (event.action) {
      case 'key.create':
        return `${who} created ${this.keyName(event)}`;
      case 'key.update':
        return `${who} changed ${this.keyName(event)}: ${keyChanges(d.changes) || 'no change'}`;
      case 'key.regenerate':
        return d.grace_seconds
          ? `${who} regenerated ${this.keyName(event)} with a ${duration(d.grace_seconds)} grace`
          : `${who} regenerated ${this.keyName(event)}; the old secret stopped at once`;
      case 'key.delete':
        return `${who} deleted ${this.keyName(event)}`;
      case 'key.leaked':
        return `GitHub secret scanning found ${this.keyName(event)} in public${d.url ? ` (${d.url})` : ''}; the key was ${d.action ?? 'reported'}`;
      case 'member.create':
        return `${who} added ${d.email ?? this.memberName(event)} as ${ROLE_NAMES[d.role] ?? d.role}`;
      case 'member.update': {
        const changes = d.changes ?? {};
        const parts = [];
        const self = event.actor.id === event.target.id;
        const whose = self ? 'their own' : `${this.memberName(event)}'s`;
        if (changes.role) parts.push(`changed ${whose} role from ${ROLE_NAMES[changes.role.from]} to ${ROLE_NAMES[changes.role.to]}`);
        if (changes.name) parts.push(self ? `set their name to ‘${changes.name}’` : `renamed ${this.memberName(event)} to ‘${changes.name}’`);
        return `${who} ${list(parts) || `updated ${this.memberName(event)}`}`;
      }
      case 'member.delete':
        return `${who} removed ${d.email ?? this.memberName(event)}`;
      case 'member.regenerate_token':
        return event.actor.id === event.target.id ? `${who} regenerated their own admin token` : `${who} regenerated ${this.memberName(event)}'s admin token`;
      case 'webhook.create':
        return `${who} added the webhook endpoint ${d.url}`;
      case 'webhook.update':
        return `${who} changed the webhook endpoint${d.changes?.url ? ` to ${d.changes.url}` : ''}${'enabled' in (d.changes ?? {}) ? (d.changes.enabled ? ' (enabled)' : ' (disabled)') : ''}`;
      case 'webhook.delete':
        return `${who} deleted the webhook endpoint ${d.url ?? ''}`.trim();
      case 'webhook.rotate_secret':
        return `${who} rotated a webhook endpoint's signing secret`;
      case 'webhook.resend':
        return `${who} resent a webhook delivery`;
      case 'account.create':
        return `${who} created the account`;
      default:
        return `${who}: ${event.action}`;
    }
  }

  entry(event) {
    return h(
      'li',
      { class: 'audit-entry', 'data-action': event.action },
      h('span', { class: `audit-dot audit-${event.action.split('.')[0]}`, 'aria-hidden': 'true' }),
      h(
        'div',
        { class: 'audit-body' },
        h('p', { class: 'audit-sentence', text: this.sentence(event) }),
        h(
          'p',
          { class: 'audit-meta muted' },
          h('time', { datetime: event.at, title: exactTime(event.at), class: 'relative-time', text: relativeTime(event.at) }),
          event.client_ip ? ` · from ${event.client_ip}` : '',
          ` · ${ACTIONS[event.action] ?? event.action}`,
        ),
      ),
    );
  }
}
