// Building the page from data: elements and text nodes only, never markup. The page's
// Content-Security-Policy requires Trusted Types, so assigning a string to innerHTML
// would throw anyway: a key named <img src=x onerror=alert(1)> can only ever be text.

export function h(tag, props = null, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') el.className = value;
    else if (name === 'text') el.textContent = value;
    else if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child)); // strings become text nodes
  }
  return el;
}

export function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from the page`);
  return el;
}

// Icons drawn on a 24×24 grid with round strokes.
const ICONS = {
  plus: [['path', { d: 'M12 5v14M5 12h14' }]],
  copy: [
    ['rect', { x: 8, y: 8, width: 12, height: 12, rx: 2 }],
    ['path', { d: 'M16 8V6a2 2 0 0 0-2-2H6a2 2 0 0 0-2 2v8a2 2 0 0 0 2 2h2' }],
  ],
  regenerate: [
    ['path', { d: 'M4 12a8 8 0 0 1 13.7-5.6L20 8.5' }],
    ['path', { d: 'M20 4v4.5h-4.5' }],
    ['path', { d: 'M20 12a8 8 0 0 1-13.7 5.6L4 15.5' }],
    ['path', { d: 'M4 20v-4.5h4.5' }],
  ],
  trash: [
    ['path', { d: 'M4 7h16M10 11v6M14 11v6' }],
    ['path', { d: 'M6 7l1 12a2 2 0 0 0 2 2h6a2 2 0 0 0 2-2l1-12' }],
    ['path', { d: 'M9 7V5a1 1 0 0 1 1-1h4a1 1 0 0 1 1 1v2' }],
  ],
  key: [
    ['circle', { cx: 7.5, cy: 15.5, r: 4.5 }],
    ['path', { d: 'M10.7 12.3 20 3M16 7l3 3M14 9l2 2' }],
  ],
  lock: [
    ['rect', { x: 5, y: 11, width: 14, height: 10, rx: 2 }],
    ['path', { d: 'M8 11V7a4 4 0 0 1 8 0v4M12 15v2' }],
  ],
  check: [['path', { d: 'M5 12.5l4.5 4.5L19 7.5' }]],
  alert: [
    ['path', { d: 'M10.3 4.2 2.6 17.5A2 2 0 0 0 4.3 20.5h15.4a2 2 0 0 0 1.7-3L13.7 4.2a2 2 0 0 0-3.4 0z' }],
    ['path', { d: 'M12 9.5v4M12 17h.01' }],
  ],
  x: [['path', { d: 'M6 6l12 12M18 6 6 18' }]],
  edit: [
    ['path', { d: 'M4 20h4L19 9a2.8 2.8 0 0 0-4-4L4 16v4z' }],
    ['path', { d: 'M13.5 6.5l4 4' }],
  ],
  chart: [['path', { d: 'M4 20V4M4 20h16M8 16v-4M12 16V8M16 16v-6' }]],
  user: [
    ['circle', { cx: 12, cy: 8, r: 4 }],
    ['path', { d: 'M4 21a8 8 0 0 1 16 0' }],
  ],
  chevronLeft: [['path', { d: 'M15 18l-6-6 6-6' }]],
  chevronRight: [['path', { d: 'M9 18l6-6-6-6' }]],
};

const SVG = 'http://www.w3.org/2000/svg';

export function icon(name) {
  const svg = document.createElementNS(SVG, 'svg');
  for (const [k, v] of Object.entries({
    viewBox: '0 0 24 24', fill: 'none', stroke: 'currentColor', 'stroke-width': 2,
    'stroke-linecap': 'round', 'stroke-linejoin': 'round', 'aria-hidden': 'true', class: 'icon',
  })) svg.setAttribute(k, String(v));
  for (const [tag, attrs] of ICONS[name]) {
    const shape = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) shape.setAttribute(k, String(v));
    svg.append(shape);
  }
  return svg;
}

/** Replace every `<span data-icon="name">` placeholder in the static HTML with its icon. */
export function fillIcons(root = document) {
  for (const slot of root.querySelectorAll('[data-icon]')) {
    slot.replaceChildren(icon(slot.dataset.icon));
    slot.classList.add('icon-slot');
    slot.removeAttribute('data-icon');
  }
}

/** Copy text to the clipboard; false if the browser would not let us. */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // fall through to the older way (e.g. permission refused)
    }
  }
  // Plain http on a private address is not a secure context: no Clipboard API there.
  // A modal dialog makes the rest of the page inert, so the helper goes inside it.
  const host = document.querySelector('dialog[open]') ?? document.body;
  const area = h('textarea', { class: 'clipboard-helper', readonly: true, 'aria-hidden': 'true' });
  area.value = text;
  host.append(area);
  area.select();
  let copied = false;
  try {
    copied = document.execCommand('copy');
  } catch {
    copied = false;
  }
  area.value = '';
  area.remove();
  return copied;
}

/** A short message in the corner; errors stay until dismissed. */
export function toast(message, { kind = 'success', timeout = 4000 } = {}) {
  const close = h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss' }, icon('x'));
  const el = h(
    'div',
    { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' },
    h('span', { class: 'toast-icon' }, icon(kind === 'error' ? 'alert' : 'check')),
    h('span', { class: 'toast-text', text: message }),
    close,
  );
  const remove = () => el.remove();
  close.addEventListener('click', remove);
  byId('toasts').append(el);
  if (kind !== 'error') setTimeout(remove, timeout);
  return el;
}

/** Success notes belong to what was just done: a new dialog clears them (errors stay). */
export function clearToasts() {
  for (const el of document.querySelectorAll('#toasts .toast:not(.toast-error)')) el.remove();
}

export function show(el, visible = true) {
  el.hidden = !visible;
}
