// Modal dialogs on <dialog>: the page behind is inert, Tab cycles inside the
// dialog, Escape closes it, and focus goes back to what opened it.

const FOCUSABLE = [
  'a[href]',
  'button:not([disabled])',
  'input:not([disabled]):not([type="hidden"])',
  'select:not([disabled])',
  'textarea:not([disabled])',
  '[tabindex]:not([tabindex="-1"])',
].join(',');

/** What each open dialog returns focus to, and what to run when it closes. */
const open = new WeakMap();

function focusables(dialog) {
  return [...dialog.querySelectorAll(FOCUSABLE)].filter((el) => el.getClientRects().length > 0);
}

function trapTab(event) {
  if (event.key !== 'Tab') return;
  const dialog = event.currentTarget;
  const items = focusables(dialog);
  if (items.length === 0) return;
  const first = items[0];
  const last = items[items.length - 1];
  if (event.shiftKey && (document.activeElement === first || !dialog.contains(document.activeElement))) {
    event.preventDefault();
    last.focus();
  } else if (!event.shiftKey && document.activeElement === last) {
    event.preventDefault();
    first.focus();
  }
}

function onCancel(event) {
  // Escape: close through closeModal so the dialog's own clean-up runs.
  event.preventDefault();
  closeModal(event.currentTarget);
}

/**
 * Shows `dialog` as a modal. `fallbackFocus` is focused instead of the opener
 * when the opener is gone by the time the dialog closes (a revoked key's button).
 */
export function openModal(dialog, { initialFocus, onClose, fallbackFocus } = {}) {
  open.set(dialog, { opener: document.activeElement, onClose, fallbackFocus });
  dialog.addEventListener('keydown', trapTab);
  dialog.addEventListener('cancel', onCancel);
  dialog.showModal();
  (initialFocus ?? focusables(dialog)[0])?.focus();
}

export function closeModal(dialog) {
  const state = open.get(dialog);
  if (!state) return;
  open.delete(dialog);
  dialog.removeEventListener('keydown', trapTab);
  dialog.removeEventListener('cancel', onCancel);
  dialog.close();
  state.onClose?.();
  const target = state.opener?.isConnected ? state.opener : state.fallbackFocus;
  target?.focus();
}
