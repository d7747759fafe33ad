// The "Account → API Keys" page: sign in with an admin token, then the key table, or a
// plain message for Read-only members. Every request goes to the JSON API on this origin.

import { Api, ApiError } from './api.js';
import { byId, fillIcons, show } from './dom.js';
import { KeysView } from './keys.js';
import { currentToken, forgetToken, keepToken } from './session.js';
import { WebhooksView } from './webhooks.js';

const ROLE_NAMES = { owner: 'Owner', admin: 'Admin', readonly: 'Read-only' };
const VIEWS = ['view-loading', 'view-signin', 'view-keys', 'view-readonly'];

const SESSION_ENDED =
  'Your admin token is no longer accepted: it may have been regenerated, or your membership removed. Sign in again with a current token.';

const api = new Api(currentToken, () => signOut(SESSION_ENDED));
const keys = new KeysView(api, { onForbidden: () => showReadonly() });
const webhooks = new WebhooksView(api);
let account = null;

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
  const { me, acct } = await whoIs(token);
  keepToken(token);
  account = acct;
  showSession(me);
  document.title = `API Keys · ${acct.name} · GrowPanel`;
  if (me.role === 'readonly') {
    showReadonly();
    return;
  }
  showView('view-keys');
  keys.reset();
  webhooks.reset();
  show(byId('webhooks'), me.role === 'owner'); // endpoints are the Owners' to manage
  await Promise.all([keys.load(), me.role === 'owner' ? webhooks.load() : null]);
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
  keys.reset();
  webhooks.reset();
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
byId('signin-form').addEventListener('submit', onSignIn);
byId('sign-out').addEventListener('click', () => signOut());
byId('boot-retry').addEventListener('click', resume);
byId('boot-signout').addEventListener('click', () => signOut());
resume();
