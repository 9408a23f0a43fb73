// Who is signed in to which server: restored at start, checked against GET /v1/me, cleared on
// sign-out or when the server says the session ended.
import { Platform } from 'react-native';
import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from 'react';

import { Client, type Config, type Session as SessionOut } from '../api/client';
import { ApiError } from '../api/errors';
import type { Language } from '../i18n';
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
  signIn: (username: string, password: string) => Promise<void>;
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

  const signIn = useCallback(
    async (username: string, password: string) => {
      const session: SessionOut = await new Client(stored.server).signIn(username, password);
      update({ ...stored, token: session.token, name: session.user.name, role: session.user.role, expiresAt: session.expires_at });
    },
    [stored, update],
  );

  const signOut = useCallback(async () => {
    try {
      await client.signOut();
    } catch {
      // signed out locally either way; the server forgets the session when it expires
    }
    update({ ...stored, token: null, name: null, role: null, expiresAt: null });
  }, [client, stored, update]);

  const handleError = useCallback(
    (err: unknown) => {
      if (err instanceof ApiError && err.kind === 'sessionExpired') update({ ...stored, token: null });
    },
    [stored, update],
  );

  const value = useMemo<SessionState>(
    () => ({
      restored,
      stored,
      client,
      config,
      signedIn: stored.token !== null,
      setServer: (server) => update({ ...stored, server: server.trim() }),
      setLanguage: (language) => update({ ...stored, language }),
      signIn,
      signOut,
      handleError,
    }),
    [restored, stored, client, config, update, signIn, signOut, handleError],
  );
  return <SessionContext.Provider value={value}>{children}</SessionContext.Provider>;
}

export function useSession(): SessionState {
  const value = useContext(SessionContext);
  if (!value) throw new Error('useSession outside SessionProvider');
  return value;
}
