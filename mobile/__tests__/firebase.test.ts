// Firebase sign-in errors become the app's own, translated like every other (src/session/firebase.ts), and
// the server's 403 user_disabled is the same "account disabled" message.
import { ApiError, fromResponse } from '../src/api/errors';
import { errorMessage, translator } from '../src/i18n';
import { fromFirebase } from '../src/session/firebase';

class FirebaseLike extends Error {
  constructor(readonly code: string) {
    super(`Firebase: Error (${code}).`);
  }
}

test.each([
  ['auth/invalid-credential', 'signInFailed'],
  ['auth/invalid-email', 'invalidEmail'],
  ['auth/email-already-in-use', 'emailInUse'],
  ['auth/weak-password', 'weakPassword'],
  ['auth/too-many-requests', 'tooManyAttempts'],
  ['auth/user-disabled', 'accountDisabled'],
  ['auth/network-request-failed', 'network'],
  ['auth/something-new', 'server'],
])('%s is %s', (code, kind) => {
  const err = fromFirebase(new FirebaseLike(code));
  expect(err).toBeInstanceOf(ApiError);
  expect([err.kind, err.code]).toEqual([kind, code]);
});

test('an ApiError passes through, and every kind has a message in both languages', () => {
  const same = new ApiError('network', 'x');
  expect(fromFirebase(same)).toBe(same);
  for (const language of ['en', 'es'] as const) {
    const t = translator(language);
    for (const kind of ['invalidEmail', 'emailInUse', 'weakPassword', 'accountDisabled'] as const) {
      const text = errorMessage(t, new ApiError(kind, 'x'));
      expect(text).not.toMatch(/^errors\./);
      expect(text.length).toBeGreaterThan(10);
    }
  }
});

test("the server's answers for Firebase tokens", () => {
  expect(fromResponse(403, { error: { code: 'user_disabled', message: 'm' } }, null).kind).toBe('accountDisabled');
  const expired = fromResponse(401, { error: { code: 'token_expired', message: 'm' } }, null);
  expect([expired.kind, expired.code]).toEqual(['sessionExpired', 'token_expired']);
});
