// Dates and times as people read them, in the browser's time zone.

const relative = new Intl.RelativeTimeFormat('en', { numeric: 'always' });
const day = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' });
const dayAndTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const hour = new Intl.DateTimeFormat(undefined, { hour: 'numeric' });
const monthDay = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });

const UNITS = [
  ['year', 365 * 24 * 3600],
  ['month', 30 * 24 * 3600],
  ['week', 7 * 24 * 3600],
  ['day', 24 * 3600],
  ['hour', 3600],
  ['minute', 60],
];

/** "2 hours ago", "in 3 days", "just now". */
export function timeAgo(date, now = new Date()) {
  const seconds = Math.round((date.getTime() - now.getTime()) / 1000);
  if (Math.abs(seconds) < 60) return 'just now';
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size) {
      return relative.format(Math.trunc(seconds / size), unit);
    }
  }
  return 'just now';
}

/** A proto3 JSON timestamp (RFC 3339), or null when the field is unset. */
export function parseTimestamp(value) {
  return value ? new Date(value) : null;
}

export const formatDay = (date) => day.format(date);
export const formatDayAndTime = (date) => dayAndTime.format(date);
export const formatHour = (date) => hour.format(date);
export const formatMonthDay = (date) => monthDay.format(date);

/** "1 key", "3 keys". */
export function plural(count, one, many = `${one}s`) {
  return `${count.toLocaleString('en')} ${count === 1 ? one : many}`;
}
