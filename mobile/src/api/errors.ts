// Every failure the app can meet, as one error type the screens turn into a translated message.
export type ErrorKind =
  | 'network' // no answer at all (offline, wrong server, DNS)
  | 'cancelled' // the user cancelled the upload
  | 'signInFailed'
  | 'invalidEmail' // Firebase sign-in: not an e-mail address
  | 'emailInUse' // Firebase sign-up: an account has this e-mail already
  | 'weakPassword' // Firebase sign-up: the password is too short
  | 'accountDisabled' // Firebase: the account is disabled (403 user_disabled)
  | 'tooManyAttempts'
  | 'sessionExpired'
  | 'tooLarge'
  | 'notAnImage'
  | 'invalidImage'
  | 'noLesion' // automatic finding found no lesion (422 no_lesion_found): a result, not a failure
  | 'notFound'
  | 'busy'
  | 'diskFull'
  | 'server';

export class ApiError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    readonly status = 0,
    readonly code = '',
    readonly retryAfter: number | null = null,
    /** the answer's other `error` fields (e.g. `score` and `threshold` of no_lesion_found) */
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** The app's error for a server answer `{"error": {"code", "message"}}` with this status. */
export function fromResponse(status: number, body: unknown, retryAfter: string | null): ApiError {
  const error = (body as { error?: { code?: string; message?: string } & Record<string, unknown> } | null)?.error;
  const code = error?.code ?? '';
  const message = error?.message ?? `HTTP ${status}`;
  const seconds = retryAfter !== null && /^\d+$/.test(retryAfter) ? Number(retryAfter) : null;
  const kind: ErrorKind =
    code === 'invalid_credentials' ? 'signInFailed'
    : code === 'no_lesion_found' ? 'noLesion'
    : code === 'user_disabled' ? 'accountDisabled'
    : status === 429 ? 'tooManyAttempts'
    : status === 401 ? 'sessionExpired'
    : status === 413 ? 'tooLarge'
    : status === 415 ? 'notAnImage'
    : status === 422 ? 'invalidImage'
    : status === 404 ? 'notFound'
    : status === 503 ? 'busy'
    : status === 507 ? 'diskFull'
    : 'server';
  const { code: _code, message: _message, ...details } = error ?? {};
  return new ApiError(kind, message, status, code, seconds, details);
}
