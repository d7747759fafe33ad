// Where the admin token lives: this tab's sessionStorage (it survives a reload, dies with
// the tab, and no other tab or site sees it), or this page's memory where sessionStorage is
// unavailable. Never a cookie (sent with every request, CSRF) nor localStorage (kept forever).

const STORAGE_KEY = 'growpanel.admin-token';
let inMemory = null;

function storage() {
  try {
    return window.sessionStorage;
  } catch {
    return null; // storage disabled by the browser's settings
  }
}

export function currentToken() {
  try {
    return storage()?.getItem(STORAGE_KEY) ?? inMemory;
  } catch {
    return inMemory;
  }
}

export function keepToken(token) {
  inMemory = token;
  try {
    storage()?.setItem(STORAGE_KEY, token);
  } catch {
    // quota or privacy mode: memory alone still works until the page is reloaded
  }
}

export function forgetToken() {
  inMemory = null;
  try {
    storage()?.removeItem(STORAGE_KEY);
  } catch {
    // nothing stored
  }
}
