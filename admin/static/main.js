// The account console: sign in with an admin token, then API keys, usage, members, the
// audit log and webhooks as pages of one document (#keys, #usage, …), each shown to the
// roles the API lets read it; Read-only members get a plain message. Every request goes
// to the JSON API on this origin.

import { Api, ApiError } from './api.js';
import { AuditView } from './audit.js';
import { byId, fillIcons, show } from './dom.js';
import { KeysView } from './keys.js';
import { MembersView, ROLE_NAMES } from './members.js';
import { currentToken, forgetToken, keepToken } from './session.js';
import { UsageView } from './usage.js';
import { WebhooksView } from './webhooks.js';

const PAGES = {
  keys: { view: 'view-keys', title: 'API Keys', roles: ['owner', 'admin'] },
  usage: { view: 'view-usage', title: 'Usage', roles: ['owner', 'admin'] },
  members: { view: 'view-members', title: 'Members', roles: ['owner', 'admin'] },
  audit: { view: 'view-audit', title: 'Audit log', roles: ['owner', 'admin'] },
  webhooks: { view: 'view-webhooks', title: 'Webhooks', roles: ['owner'] },
};
const VIEWS = ['view-loading', 'view-signin', 'view-readonly', ...Object.values(PAGES).map((p) => p.view)];

const SESSION_ENDED =
  'Your admin token is no longer accepted: it may have been regenerated, or your membership removed. Sign in again with a current token.';

const api = new Api(currentToken, () => signOut(SESSION_ENDED));
const keys = new KeysView(api, { onForbidden: () => showReadonly() });
const usage = new UsageView(api);
const members = new MembersView(api);
const audit = new AuditView(api);
const webhooks = new WebhooksView(api);
let account = null;
let me = null;
keys.onUsage = (key) => {
  usage.keyId = key.id;
  pendingUsageKey = key;
  window.location.hash = '#usage';
};
let pendingUsageKey = null;

function showView(id) {
  for (const view of VIEWS) show(byId(view), view === id);
}

function initials(text) {
  const words = text.replace(/@.*/, '').split(/[\s._-]+/).filter(Boolean);
  return words.slice(0, 2).map((word) => [...word][0].toUpperCase()).join('') || '?';
}

function showSession(me) {
  const who = me.name || me.email;
  byId('session-account').textContent = account.name;
  byId('session-avatar').textContent = initials(who);
  byId('session-name').textContent = who;
  byId('session-name').title = me.email;
  byId('session-role').textContent = ROLE_NAMES[me.role] ?? me.role;
  byId('session-role').dataset.role = me.role;
  show(byId('session'));
}

function showReadonly() {
  show(byId('console-nav'), false);
  byId('readonly-text').textContent = `Your role in ${account.name} is Read-only. Ask an Owner or an Admin of the account if you need a key, or if your role should change.`;
  showView('view-readonly');
}

/** Who the token belongs to; throws an ApiError whose message says what to do. */
async function whoIs(token) {
  try {
    const [me, acct] = await Promise.all([
      api.request('GET', '/v1/me', undefined, token),
      api.request('GET', '/v1/account', undefined, token),
    ]);
    return { me, acct };
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      throw new ApiError(401, error.code, "That admin token isn't valid. Check that you pasted all of it (it starts with gpa_), or ask an Owner of your account for a new one.");
    }
    if (error instanceof ApiError && error.status === 403) {
      throw new ApiError(403, error.code, "This is the gateway's operator token. It creates accounts but does not belong to one: sign in with a member's admin token (gpa_…) to manage that account's keys.");
    }
    throw error;
  }
}

async function enter(token) {
  const { me: who, acct } = await whoIs(token);
  keepToken(token);
  account = acct;
  me = who;
  showSession(me);
  for (const view of [keys, usage, members, audit, webhooks]) view.reset();
  if (me.role === 'readonly') {
    document.title = `API Keys · ${acct.name} · GrowPanel`;
    showReadonly();
    focusHeading('view-readonly');
    return;
  }
  for (const tab of document.querySelectorAll('#console-nav .tab')) {
    const page = PAGES[tab.getAttribute('href').slice(1)];
    show(tab, page.roles.includes(me.role));
  }
  show(byId('console-nav'));
  await route({ focus: true });
}

/** The page named by the address's #fragment (API keys by default), if the role may see it. */
function currentPage() {
  const name = window.location.hash.slice(1);
  return PAGES[name] && PAGES[name].roles.includes(me.role) ? name : 'keys';
}

function focusHeading(view) {
  // After sign-in or a change of page, keyboard and screen-reader users start at the
  // page's heading, not at the top of the document.
  byId(view).querySelector('h1')?.focus();
}

async function route({ focus = false } = {}) {
  if (!me || me.role === 'readonly') return;
  const name = currentPage();
  const page = PAGES[name];
  for (const tab of document.querySelectorAll('#console-nav .tab')) {
    if (tab.getAttribute('href') === `#${name}`) tab.setAttribute('aria-current', 'page');
    else tab.removeAttribute('aria-current');
  }
  document.title = `${page.title} · ${account.name} · GrowPanel`;
  showView(page.view);
  if (focus) focusHeading(page.view);
  // Busy until the page's data is in (assistive technology waits for it; so do the tests).
  const view = byId(page.view);
  view.setAttribute('aria-busy', 'true');
  try {
    if (name === 'keys') await keys.load();
    else if (name === 'usage') {
      await usage.fillKeys();
      const key = pendingUsageKey;
      pendingUsageKey = null;
      await usage.select(key ? key.id : usage.keyId, key?.name);
    } else if (name === 'members') await members.load(me);
    else if (name === 'audit') await audit.open();
    else if (name === 'webhooks') await webhooks.load();
  } finally {
    view.removeAttribute('aria-busy');
  }
}

function showSignIn(notice = '') {
  show(byId('session'), false);
  byId('signin-notice').textContent = notice;
  show(byId('signin-notice'), Boolean(notice));
  show(byId('signin-error'), false);
  document.title = 'API Keys · GrowPanel';
  showView('view-signin');
  byId('signin-token').focus();
}

function signOut(notice = 'You have signed out. Your admin token is no longer kept in this tab.') {
  forgetToken();
  account = null;
  me = null;
  show(byId('console-nav'), false);
  for (const view of [keys, usage, members, audit, webhooks]) view.reset();
  // A dialog still open (a new key on screen) is closed, which also wipes the key.
  for (const dialog of document.querySelectorAll('dialog[open]')) dialog.close();
  byId('signin-token').value = '';
  showSignIn(notice);
}

async function onSignIn(event) {
  event.preventDefault();
  const input = byId('signin-token');
  const submit = byId('signin-submit');
  const error = byId('signin-error');
  const token = input.value.trim();
  show(byId('signin-notice'), false);
  if (!token) {
    error.textContent = 'Paste your admin token to sign in.';
    show(error);
    input.focus();
    return;
  }
  submit.disabled = true;
  submit.textContent = 'Signing in…';
  show(error, false);
  try {
    await enter(token);
    input.value = '';
  } catch (failure) {
    error.textContent = failure.message;
    show(error);
    input.select();
  } finally {
    submit.disabled = false;
    submit.textContent = 'Sign in';
  }
}

async function resume() {
  const token = currentToken();
  if (!token) {
    showSignIn();
    return;
  }
  showView('view-loading');
  show(byId('boot-loading'));
  show(byId('boot-error'), false);
  try {
    await enter(token);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      signOut(SESSION_ENDED);
      return;
    }
    show(byId('boot-loading'), false);
    byId('boot-error-text').textContent = `Couldn't load your account. ${error.message}`;
    show(byId('boot-error'));
  }
}

fillIcons();
window.addEventListener('hashchange', () => route({ focus: true }));
byId('signin-form').addEventListener('submit', onSignIn);
byId('sign-out').addEventListener('click', () => signOut());
byId('boot-retry').addEventListener('click', resume);
byId('boot-signout').addEventListener('click', () => signOut());
resume();
