/**
 * Python's `datetime.now().strftime(format)` in the C locale, for chat templates that print
 * today's date (Llama 3.1: `strftime_now("%d %b %Y")`). Local time, English names whatever the
 * process locale, as transformers renders them.
 */
const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];
const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];

const pad = (n: number, width = 2): string => String(n).padStart(width, '0');

function dayOfYear(date: Date): number {
  const start = new Date(date.getFullYear(), 0, 1);
  return Math.round((date.getTime() - start.getTime()) / 86_400_000) + 1;
}

/** Unknown directives are left as written, as glibc does. */
export function strftime(date: Date, format: string): string {
  return format.replace(/%(-?)([a-zA-Z%])/g, (whole: string, noPad: string, directive: string) => {
    const num = (n: number, width = 2): string => (noPad ? String(n) : pad(n, width));
    const hour12 = date.getHours() % 12 || 12;
    switch (directive) {
      case 'Y': return String(date.getFullYear());
      case 'y': return pad(date.getFullYear() % 100);
      case 'm': return num(date.getMonth() + 1);
      case 'd': return num(date.getDate());
      case 'e': return String(date.getDate()).padStart(2, ' ');
      case 'j': return num(dayOfYear(date), 3);
      case 'H': return num(date.getHours());
      case 'I': return num(hour12);
      case 'M': return num(date.getMinutes());
      case 'S': return num(date.getSeconds());
      case 'p': return date.getHours() < 12 ? 'AM' : 'PM';
      case 'a': return DAYS[date.getDay()].slice(0, 3);
      case 'A': return DAYS[date.getDay()];
      case 'w': return String(date.getDay());
      case 'b': case 'h': return MONTHS[date.getMonth()].slice(0, 3);
      case 'B': return MONTHS[date.getMonth()];
      case 'F': return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
      case 'T': return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
      case '%': return '%';
      default: return whole;
    }
  });
}

export function strftimeNow(format: string): string {
  return strftime(new Date(), format);
}
