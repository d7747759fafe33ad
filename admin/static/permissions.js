// What a key may do, as the create and edit dialogs offer it: choices grouped by resource,
// each with a Read and a Write toggle (and any other action the route table defines).
//
// `permissionChoices()` is the only place that knows where the choices come from: the
// route table's permissions, `GET /v1/permissions` ({name, description, resource, action,
// routes}), held in the key object's `permissions` field. (Before route permissions it
// returned the four fixed scopes and the field `scopes`; nothing else changed.)

import { h } from './dom.js';

/**
 * The permission choices and the key field that holds them.
 * @returns {Promise<{field: string, choices: {value: string, resource: string, action: string, description: string}[]}>}
 */
export async function permissionChoices(api) {
  const data = await api.get('/v1/permissions');
  return {
    field: 'permissions',
    choices: data.items.map((item) => ({
      value: item.name,
      resource: item.resource,
      action: item.action,
      description: item.description,
    })),
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
    // Read, then Write, then whatever other actions the route table names.
    const actions = [...new Set([...ACTIONS, ...items.map((item) => item.action)])];
    const toggles = actions.map((action) => {
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
