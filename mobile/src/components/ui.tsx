// The few building blocks every screen uses: a page, a button, a message line, the research notice.
import type { ReactNode } from 'react';
import { ActivityIndicator, Pressable, ScrollView, StyleSheet, Text, View, type ViewStyle } from 'react-native';

import { useI18n } from '../i18n';
import { usePalette } from '../theme';

export function Page({ children, scroll = true }: { children: ReactNode; scroll?: boolean }) {
  const palette = usePalette();
  const inner = <View style={styles.column}>{children}</View>;
  return (
    <View style={[styles.page, { backgroundColor: palette.background }]}>
      {scroll ? <ScrollView contentContainerStyle={styles.scroll}>{inner}</ScrollView> : inner}
    </View>
  );
}

export function Card({ children, style }: { children: ReactNode; style?: ViewStyle }) {
  const palette = usePalette();
  return <View style={[styles.card, { backgroundColor: palette.card, borderColor: palette.border }, style]}>{children}</View>;
}

export function Title({ children }: { children: ReactNode }) {
  const palette = usePalette();
  return (
    <Text accessibilityRole="header" style={[styles.title, { color: palette.text }]}>
      {children}
    </Text>
  );
}

export function Body({ children, muted, testID }: { children: ReactNode; muted?: boolean; testID?: string }) {
  const palette = usePalette();
  return <Text testID={testID} style={[styles.body, { color: muted ? palette.muted : palette.text }]}>{children}</Text>;
}

type Variant = 'primary' | 'secondary' | 'danger';

export function Button(props: {
  label: string;
  onPress: () => void;
  variant?: Variant;
  disabled?: boolean;
  busy?: boolean;
  selected?: boolean;
  accessibilityLabel?: string;
  testID?: string;
}) {
  const palette = usePalette();
  const { variant = 'primary', disabled = false, busy = false, selected } = props;
  const filled = variant !== 'secondary' || selected;
  const color = variant === 'danger' ? palette.danger : palette.primary;
  return (
    <Pressable
      accessibilityRole="button"
      accessibilityLabel={props.accessibilityLabel ?? props.label}
      accessibilityState={{ disabled: disabled || busy, selected, busy }}
      testID={props.testID}
      disabled={disabled || busy}
      onPress={props.onPress}
      style={({ pressed }) => [
        styles.button,
        { borderColor: color, backgroundColor: filled ? color : 'transparent', opacity: disabled ? 0.45 : pressed ? 0.8 : 1 },
      ]}
    >
      {busy ? <ActivityIndicator color={filled ? palette.onPrimary : color} style={styles.spinner} /> : null}
      <Text style={[styles.buttonText, { color: filled ? palette.onPrimary : color }]}>{props.label}</Text>
    </Pressable>
  );
}

export function Message({ text, kind = 'error', testID }: { text: string | null; kind?: 'error' | 'info' | 'warning'; testID?: string }) {
  const palette = usePalette();
  if (!text) return null;
  const color = kind === 'error' ? palette.danger : kind === 'warning' ? palette.warning : palette.muted;
  return (
    <Text accessibilityRole={kind === 'error' ? 'alert' : 'text'} accessibilityLiveRegion="polite" testID={testID}
      style={[styles.body, { color }]}>
      {text}
    </Text>
  );
}

export function Notice() {
  const { t } = useI18n();
  const palette = usePalette();
  return (
    <Text accessibilityRole="text" testID="notice" style={[styles.notice, { color: palette.warning, borderColor: palette.warning }]}>
      {t('notice')}
    </Text>
  );
}

export function Row({ children }: { children: ReactNode }) {
  return <View style={styles.row}>{children}</View>;
}

const styles = StyleSheet.create({
  page: { flex: 1 },
  scroll: { flexGrow: 1 },
  column: { width: '100%', maxWidth: 880, alignSelf: 'center', padding: 16, gap: 12 },
  card: { borderWidth: StyleSheet.hairlineWidth, borderRadius: 12, padding: 14, gap: 10 },
  title: { fontSize: 22, fontWeight: '700' },
  body: { fontSize: 15, lineHeight: 21 },
  button: {
    minHeight: 44, paddingHorizontal: 14, paddingVertical: 8, borderRadius: 10, borderWidth: 1.5,
    flexDirection: 'row', alignItems: 'center', justifyContent: 'center',
  },
  buttonText: { fontSize: 15, fontWeight: '600' },
  spinner: { marginRight: 8 },
  notice: { fontSize: 13, fontWeight: '600', borderWidth: 1, borderRadius: 8, padding: 8, textAlign: 'center' },
  row: { flexDirection: 'row', flexWrap: 'wrap', gap: 8, alignItems: 'center' },
});
