// Where the session lives: the phone's secure store (Keychain / Keystore); on the web, memory and
// sessionStorage (gone when the tab closes), never localStorage.
import { Platform } from 'react-native';
import * as SecureStore from 'expo-secure-store';

const KEY = 'branet.session';
let memory: string | null = null;

function webStorage(): Storage | null {
  try {
    return typeof window !== 'undefined' && window.sessionStorage ? window.sessionStorage : null;
  } catch {
    return null;
  }
}

export async function load(): Promise<string | null> {
  if (Platform.OS === 'web') return webStorage()?.getItem(KEY) ?? memory;
  return SecureStore.getItemAsync(KEY);
}

export async function save(value: string | null): Promise<void> {
  memory = value;
  if (Platform.OS === 'web') {
    const storage = webStorage();
    if (value === null) storage?.removeItem(KEY);
    else storage?.setItem(KEY, value);
    return;
  }
  if (value === null) await SecureStore.deleteItemAsync(KEY);
  else await SecureStore.setItemAsync(KEY, value);
}
