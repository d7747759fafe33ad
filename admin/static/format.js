// Times as people read them: "3 minutes ago" in the table, the exact moment on hover.

const relative = new Intl.RelativeTimeFormat('en', { numeric: 'auto' });
const exact = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'long' });
const short = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' });

const STEPS = [
  [60, 1, 'second'],
  [3600, 60, 'minute'],
  [86400, 3600, 'hour'],
  [7 * 86400, 86400, 'day'],
  [30 * 86400, 7 * 86400, 'week'],
  [365 * 86400, 30 * 86400, 'month'],
  [Infinity, 365 * 86400, 'year'],
];

/** "just now", "3 minutes ago", "yesterday", "in 2 weeks". */
export function relativeTime(iso, now = Date.now()) {
  const seconds = (Date.parse(iso) - now) / 1000;
  if (Math.abs(seconds) < 45) return 'just now';
  for (const [limit, size, unit] of STEPS) {
    if (Math.abs(seconds) < limit) {
      const value = Math.round(seconds / size);
      if (value !== 0) return relative.format(value, unit);
    }
  }
  return relative.format(Math.round(seconds / (365 * 86400)), 'year');
}

/** "Tuesday, 4 March 2025 at 14:05:12 UTC" in the browser's locale and time zone. */
export function exactTime(iso) {
  return exact.format(new Date(iso));
}

/** "Mar 4, 2025". */
export function shortDate(iso) {
  return short.format(new Date(iso));
}
