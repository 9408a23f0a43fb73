// Who is signed in to which server: restored at start, checked against GET /v1/me, cleared on
// sign-out or when the server says the session ended. A server with Firebase sign-in (GET /v1/config) gets
// the Firebase SDK's ID token as the bearer, kept fresh by the SDK (src/session/firebase.ts).
import { Platform } from 'react-native';
import { createContext, useCallback, useContext, useEffect, useMemo, useRef, useState, type ReactNode } from 'react';
import { onIdTokenChanged, type Auth } from 'firebase/auth';

import { Client, type Config, type Session as SessionOut } from '../api/client';
import { ApiError } from '../api/errors';
import type { Language } from '../i18n';
import * as fb from './firebase';
import * as storage from './storage';

export interface Stored {
  server: string;
  token: string | null;
  name: string | null;
  role: string | null;
  expiresAt: string | null;
  language: Language | null;
}

export function defaultServer(): string {
  // The web build is served by the server itself at /app: its own origin is the API.
  if (Platform.OS === 'web' && typeof window !== 'undefined' && window.location?.origin) return window.location.origin;
  return 'http://127.0.0.1:8000';
}

interface SessionState {
  restored: boolean;
  stored: Stored;
  client: Client;
  config: Config | null;
  signedIn: boolean;
  setServer: (server: string) => void;
  setLanguage: (language: Language) => void;
  /** Whether people sign in with Firebase (e-mail) on this server, per its GET /v1/config. */
  firebase: boolean;
  /** Firebase only: whether the signed-in person's e-mail is verified (null: not known, or local sign-in). */
  emailVerified: boolean | null;
  signIn: (username: string, password: string) => Promise<void>;
  /** Firebase only: a new account (a verification e-mail is sent), then signed in. */
  signUp: (email: string, password: string) => Promise<void>;
  /** Firebase only: the password reset e-mail. */
  resetPassword: (email: string) => Promise<void>;
  /** Firebase only: the verification e-mail again. */
  sendVerification: () => Promise<void>;
  signOut: () => Promise<void>;
  /** Call with any API error: a 401 ends the session. */
  handleError: (err: unknown) => void;
}

const SessionContext = createContext<SessionState | null>(null);

const EMPTY: Stored = { server: '', token: null, name: null, role: null, expiresAt: null, language: null };

export function SessionProvider({ children }: { children: ReactNode }) {
  const [stored, setStored] = useState<Stored>({ ...EMPTY, server: defaultServer() });
  const [restored, setRestored] = useState(false);
  const [config, setConfig] = useState<Config | null>(null);

  const update = useCallback((next: Stored) => {
    setStored(next);
    void storage.save(JSON.stringify(next));
  }, []);

  useEffect(() => {
    void (async () => {
      const raw = await storage.load().catch(() => null);
      if (raw) {
        try {
          const saved = { ...EMPTY, ...(JSON.parse(raw) as Partial<Stored>) };
          const expired = saved.expiresAt !== null && Date.parse(saved.expiresAt) <= Date.now();
          setStored(expired ? { ...saved, token: null } : saved);
        } catch {
          // a damaged record is as good as none
        }
      }
      setRestored(true);
    })();
  }, []);

  const client = useMemo(() => new Client(stored.server, stored.token), [stored.server, stored.token]);

  useEffect(() => {
    if (!stored.server) return;
    client.config().then(setConfig, () => setConfig(null));
  }, [client, stored.server]);

  const auth: Auth | null = useMemo(
    () => (config?.auth === 'firebase' && config.firebase ? fb.authFor(config.firebase) : null),
    [config],
  );
  const [emailVerified, setEmailVerified] = useState<boolean | null>(null);
  const storedRef = useRef(stored);
  useEffect(() => {
    storedRef.current = stored;
  }, [stored]);

  // Firebase: the SDK says when the person or their ID token changes (sign-in, hourly refresh, sign-out);
  // the server then says who that is (name, role, until when).
  useEffect(() => {
    if (!auth) return;
    return onIdTokenChanged(auth, (user) => {
      const current = storedRef.current;
      if (!user) {
        if (current.token !== null) update({ ...current, token: null, name: null, role: null, expiresAt: null });
        setEmailVerified(null);
        return;
      }
      setEmailVerified(user.emailVerified);
      void user.getIdToken().then(async (token) => {
        const me = await new Client(current.server, token).me().catch(() => null);
        update({ ...storedRef.current, token, name: me?.name ?? user.email, role: me?.role ?? null,
          expiresAt: me?.expires_at ?? null });
      });
    });
  }, [auth, update]);

  const signIn = useCallback(
    async (username: string, password: string) => {
      if (auth) {
        await fb.signIn(auth, username, password); // onIdTokenChanged takes it from here
        return;
      }
      const session: SessionOut = await new Client(stored.server).signIn(username, password);
      update({ ...stored, token: session.token, name: session.user.name, role: session.user.role, expiresAt: session.expires_at });
    },
    [auth, stored, update],
  );

  const signUp = useCallback(
    async (email: string, password: string) => {
      if (!auth) throw new ApiError('server', 'this server does not sign in with Firebase');
      await fb.signUp(auth, email, password);
    },
    [auth],
  );

  const resetPassword = useCallback(
    async (email: string) => {
      if (!auth) throw new ApiError('server', 'this server does not sign in with Firebase');
      await fb.resetPassword(auth, email);
    },
    [auth],
  );

  const sendVerification = useCallback(async () => {
    if (auth?.currentUser) await fb.verifyEmail(auth.currentUser);
  }, [auth]);

  const signOut = useCallback(async () => {
    try {
      if (auth) await fb.end(auth);
      else await client.signOut();
    } catch {
      // signed out locally either way; the server forgets the session when it expires
    }
    update({ ...stored, token: null, name: null, role: null, expiresAt: null });
  }, [auth, client, stored, update]);

  const handleError = useCallback(
    (err: unknown) => {
      if (!(err instanceof ApiError) || err.kind !== 'sessionExpired') return;
      if (auth?.currentUser && err.code === 'token_expired') {
        // a token that expired in flight: a fresh one, not a sign-out (onIdTokenChanged stores it)
        void auth.currentUser.getIdToken(true).catch(() => update({ ...storedRef.current, token: null }));
        return;
      }
      if (auth) void fb.end(auth).catch(() => undefined);
      update({ ...stored, token: null });
    },
    [auth, stored, update],
  );

  const value = useMemo<SessionState>(
    () => ({
      restored,
      stored,
      client,
      config,
      signedIn: stored.token !== null,
      firebase: auth !== null,
      emailVerified,
      setServer: (server) => update({ ...stored, server: server.trim() }),
      setLanguage: (language) => update({ ...stored, language }),
      signIn,
      signUp,
      resetPassword,
      sendVerification,
      signOut,
      handleError,
    }),
    [restored, stored, client, config, auth, emailVerified, update, signIn, signUp, resetPassword, sendVerification,
      signOut, handleError],
  );
  return <SessionContext.Provider value={value}>{children}</SessionContext.Provider>;
}

export function useSession(): SessionState {
  const value = useContext(SessionContext);
  if (!value) throw new Error('useSession outside SessionProvider');
  return value;
}
