// What a key may do, as the create and edit dialogs offer it: choices grouped by resource,
// each with a Read and a Write toggle where the API has that action.
//
// `permissionChoices()` is the only place that knows where the choices come from. Today
// they are the four scopes of the key object's `scopes` field (all read-only). When route
// permissions land, it becomes one call to `GET /v1/permissions` ({name, description,
// routes}, names `resource:action`) returning `field: 'permissions'`; nothing else here
// or in the dialogs changes.

import { h } from './dom.js';

const SCOPES = [
  ['reports', 'MRR, churn and other metrics'],
  ['customers', 'Customer records'],
  ['data', 'Raw data exports'],
  ['account', 'Account details'],
];

/**
 * The permission choices and the key field that holds them.
 * @returns {Promise<{field: string, choices: {value: string, resource: string, action: string, description: string}[]}>}
 */
export async function permissionChoices(api) {
  return {
    field: 'scopes',
    choices: SCOPES.map(([scope, description]) => ({ value: scope, resource: scope, action: 'read', description })),
  };
}

const ACTIONS = ['read', 'write'];

function title(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** Fill `container` with one group per resource; `selected` values start checked. */
export function renderPermissions(container, { choices }, selected) {
  const chosen = new Set(selected);
  const resources = new Map();
  for (const choice of choices) {
    if (!resources.has(choice.resource)) resources.set(choice.resource, []);
    resources.get(choice.resource).push(choice);
  }
  const groups = [...resources].map(([resource, items]) => {
    const heading = `${container.id}-${resource}`;
    const toggles = ACTIONS.map((action) => {
      const choice = items.find((item) => item.action === action);
      if (!choice) return null;
      return h(
        'label',
        { class: 'toggle' },
        h('input', { type: 'checkbox', name: 'permission', value: choice.value, checked: chosen.has(choice.value) }),
        h('span', { text: title(action) }),
      );
    });
    return h(
      'div',
      { class: 'permission-group', role: 'group', 'aria-labelledby': heading },
      h(
        'div',
        { class: 'permission-text' },
        h('strong', { id: heading, text: title(resource) }),
        h('small', { text: items.map((item) => item.description).filter(Boolean).join('; ') }),
      ),
      h('div', { class: 'permission-toggles' }, toggles),
    );
  });
  container.replaceChildren(...groups);
}

/** The values checked in `container`. */
export function readPermissions(container) {
  return [...container.querySelectorAll('input[name="permission"]:checked')].map((box) => box.value);
}
