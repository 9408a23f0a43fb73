// Light and dark palettes; the screens pick one from the system setting.
import { useColorScheme } from 'react-native';

export interface Palette {
  background: string;
  card: string;
  text: string;
  muted: string;
  border: string;
  primary: string;
  onPrimary: string;
  danger: string;
  benign: string;
  malignant: string;
  warning: string;
}

const light: Palette = {
  background: '#f5f6f8', card: '#ffffff', text: '#15181d', muted: '#5b6472', border: '#d5d9e0',
  primary: '#1f5fbf', onPrimary: '#ffffff', danger: '#b3261e', benign: '#1e7d4f', malignant: '#b3261e', warning: '#8a5a00',
};
const dark: Palette = {
  background: '#0f1115', card: '#1a1d23', text: '#eef0f3', muted: '#a3acb9', border: '#323844',
  primary: '#7eb0ff', onPrimary: '#0b1a33', danger: '#ff8a80', benign: '#6fd3a0', malignant: '#ff8a80', warning: '#f3c262',
};

export function usePalette(): Palette {
  return useColorScheme() === 'dark' ? dark : light;
}
