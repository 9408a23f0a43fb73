// Module 1: which server, who you are.
import { Redirect } from 'expo-router';
import { useState } from 'react';
import { StyleSheet, TextInput } from 'react-native';

import { Client } from '../src/api/client';
import { Body, Button, Card, Message, Notice, Page, Row, Title } from '../src/components/ui';
import { errorMessage, useI18n } from '../src/i18n';
import { useSession } from '../src/session/SessionContext';
import { usePalette } from '../src/theme';

export default function SignIn() {
  const { t } = useI18n();
  const palette = usePalette();
  const session = useSession();
  const [server, setServer] = useState(session.stored.server);
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [check, setCheck] = useState<'idle' | 'checking' | 'ok' | 'fail'>('idle');

  if (session.signedIn) return <Redirect href="/new" />;

  const input = [styles.input, { color: palette.text, borderColor: palette.border, backgroundColor: palette.card }];
  const checkServer = async () => {
    setCheck('checking');
    setCheck((await new Client(server).ready()) ? 'ok' : 'fail');
    if (server !== session.stored.server) session.setServer(server);
  };
  const submit = async () => {
    setBusy(true);
    setError(null);
    try {
      if (server !== session.stored.server) session.setServer(server);
      await session.signIn(username.trim(), password);
    } catch (err) {
      setError(errorMessage(t, err));
      setPassword('');
    } finally {
      setBusy(false);
    }
  };

  return (
    <Page>
      <Title>{t('app.name')}</Title>
      <Card>
        <Body>{t('signIn.server')}</Body>
        <TextInput value={server} onChangeText={(v) => { setServer(v); setCheck('idle'); }} style={input}
          accessibilityLabel={t('signIn.server')} autoCapitalize="none" autoCorrect={false} keyboardType="url"
          inputMode="url" testID="server-input" />
        <Row>
          <Button variant="secondary" label={t(check === 'checking' ? 'signIn.checking' : 'signIn.check')}
            onPress={checkServer} busy={check === 'checking'} testID="check-server" />
          {check === 'ok' ? <Message kind="info" text={t('signIn.reachable')} testID="server-ok" /> : null}
          {check === 'fail' ? <Message text={t('signIn.unreachable')} testID="server-fail" /> : null}
        </Row>
        {session.config && session.config.auth !== 'local' ? <Message kind="warning" text={t('signIn.firebase')} /> : null}
        <Body>{t('signIn.username')}</Body>
        <TextInput value={username} onChangeText={setUsername} style={input} accessibilityLabel={t('signIn.username')}
          autoCapitalize="none" autoCorrect={false} autoComplete="username" textContentType="username" testID="username" />
        <Body>{t('signIn.password')}</Body>
        <TextInput value={password} onChangeText={setPassword} style={input} accessibilityLabel={t('signIn.password')}
          secureTextEntry autoComplete="current-password" textContentType="password" onSubmitEditing={submit} testID="password" />
        <Message text={error} testID="sign-in-error" />
        <Button label={t(busy ? 'signIn.busy' : 'signIn.submit')} onPress={submit} busy={busy}
          disabled={!username.trim() || !password} testID="sign-in" />
      </Card>
      <Notice />
    </Page>
  );
}

const styles = StyleSheet.create({
  input: { borderWidth: 1, borderRadius: 8, paddingHorizontal: 12, paddingVertical: 10, fontSize: 16, minHeight: 44 },
});
