// Firebase sign-in for servers whose GET /v1/config says `auth: "firebase"`: the Firebase JS SDK signs the
// person in (e-mail and password) and its ID token is the bearer sent to the server, refreshed by the SDK
// before it expires. On the web the SDK keeps the user in sessionStorage (gone with the tab, as local sessions
// are); on a phone in memory (sign in again after the app is closed).
import { getApps, initializeApp } from 'firebase/app';
import {
  browserSessionPersistence,
  connectAuthEmulator,
  createUserWithEmailAndPassword,
  inMemoryPersistence,
  initializeAuth,
  sendEmailVerification,
  sendPasswordResetEmail,
  signInWithEmailAndPassword,
  signOut,
  type Auth,
  type User,
} from 'firebase/auth';
import { Platform } from 'react-native';

import { ApiError, type ErrorKind } from '../api/errors';
import type { components } from '../api/schema';

export type FirebaseWebConfig = components['schemas']['FirebaseWebConfig'];

const auths = new Map<string, Auth>();

/** The Auth instance for this server's Firebase project (one per project and emulator). */
export function authFor(config: FirebaseWebConfig): Auth {
  const name = `branet-${config.project_id}-${config.auth_emulator ?? 'prod'}`;
  const known = auths.get(name);
  if (known) return known;
  const app = getApps().find((a) => a.name === name) ??
    initializeApp({ apiKey: config.api_key ?? undefined, authDomain: config.auth_domain, projectId: config.project_id }, name);
  const auth = initializeAuth(app, { persistence: Platform.OS === 'web' ? browserSessionPersistence : inMemoryPersistence });
  if (config.auth_emulator) connectAuthEmulator(auth, config.auth_emulator, { disableWarnings: true });
  auths.set(name, auth);
  return auth;
}

const KINDS: Record<string, ErrorKind> = {
  'auth/invalid-credential': 'signInFailed',
  'auth/invalid-login-credentials': 'signInFailed',
  'auth/wrong-password': 'signInFailed',
  'auth/user-not-found': 'signInFailed',
  'auth/invalid-email': 'invalidEmail',
  'auth/missing-email': 'invalidEmail',
  'auth/email-already-in-use': 'emailInUse',
  'auth/weak-password': 'weakPassword',
  'auth/missing-password': 'weakPassword',
  'auth/too-many-requests': 'tooManyAttempts',
  'auth/user-disabled': 'accountDisabled',
  'auth/network-request-failed': 'network',
};

/** A Firebase SDK error as the app's ApiError (its code kept), so screens translate it like any other. */
export function fromFirebase(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  const message = err instanceof Error ? err.message : String(err);
  const kind = typeof code === 'string' ? (KINDS[code] ?? 'server') : 'server';
  return new ApiError(kind, message, 0, typeof code === 'string' ? code : '');
}

async function wrap<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    throw fromFirebase(err);
  }
}

export const signIn = (auth: Auth, email: string, password: string): Promise<User> =>
  wrap(async () => (await signInWithEmailAndPassword(auth, email, password)).user);

/** A new account; the verification e-mail is asked for at once (its failure does not undo the account). */
export const signUp = (auth: Auth, email: string, password: string): Promise<User> =>
  wrap(async () => {
    const { user } = await createUserWithEmailAndPassword(auth, email, password);
    await sendEmailVerification(user).catch(() => undefined);
    return user;
  });

export const resetPassword = (auth: Auth, email: string): Promise<void> =>
  wrap(() => sendPasswordResetEmail(auth, email));

export const verifyEmail = (user: User): Promise<void> => wrap(() => sendEmailVerification(user));

export const end = (auth: Auth): Promise<void> => wrap(() => signOut(auth));
