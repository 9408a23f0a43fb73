// Module 1: which server, who you are: a user name and password on a local server, an e-mail and password
// (sign-in, sign-up, password reset) on a server with Firebase sign-in.
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
  const [info, setInfo] = useState<string | null>(null);
  const [signingUp, setSigningUp] = useState(false);
  const [check, setCheck] = useState<'idle' | 'checking' | 'ok' | 'fail'>('idle');

  if (session.signedIn) return <Redirect href="/new" />;

  const input = [styles.input, { color: palette.text, borderColor: palette.border, backgroundColor: palette.card }];
  const checkServer = async () => {
    setCheck('checking');
    setCheck((await new Client(server).ready()) ? 'ok' : 'fail');
    if (server !== session.stored.server) session.setServer(server);
  };
  const run = async (work: () => Promise<void>, keepPassword = false) => {
    setBusy(true);
    setError(null);
    setInfo(null);
    try {
      if (server !== session.stored.server) session.setServer(server);
      await work();
    } catch (err) {
      setError(errorMessage(t, err));
      if (!keepPassword) setPassword('');
    } finally {
      setBusy(false);
      setSigningUp(false);
    }
  };
  const submit = () => run(() => session.signIn(username.trim(), password));
  const signUp = () => {
    setSigningUp(true);
    return run(() => session.signUp(username.trim(), password));
  };
  const reset = () => run(async () => {
    await session.resetPassword(username.trim());
    setInfo(t('signIn.resetSent'));
  }, true);
  const firebase = session.firebase;

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
        <Body>{t(firebase ? 'signIn.email' : 'signIn.username')}</Body>
        <TextInput value={username} onChangeText={setUsername} style={input}
          accessibilityLabel={t(firebase ? 'signIn.email' : 'signIn.username')} autoCapitalize="none" autoCorrect={false}
          autoComplete={firebase ? 'email' : 'username'} textContentType={firebase ? 'emailAddress' : 'username'}
          keyboardType={firebase ? 'email-address' : 'default'} testID="username" />
        <Body>{t('signIn.password')}</Body>
        <TextInput value={password} onChangeText={setPassword} style={input} accessibilityLabel={t('signIn.password')}
          secureTextEntry autoComplete="current-password" textContentType="password" onSubmitEditing={submit} testID="password" />
        <Message text={error} testID="sign-in-error" />
        <Message kind="info" text={info} testID="sign-in-info" />
        <Button label={t(busy && !signingUp ? 'signIn.busy' : 'signIn.submit')} onPress={submit} busy={busy && !signingUp}
          disabled={busy || !username.trim() || !password} testID="sign-in" />
        {firebase ? (
          <Row>
            <Button variant="secondary" label={t(signingUp ? 'signIn.signingUp' : 'signIn.signUp')} onPress={signUp}
              busy={signingUp} disabled={busy || !username.trim() || !password} testID="sign-up" />
            <Button variant="secondary" label={t('signIn.reset')} onPress={reset} disabled={busy || !username.trim()}
              testID="reset-password" />
          </Row>
        ) : null}
      </Card>
      <Notice />
    </Page>
  );
}

const styles = StyleSheet.create({
  input: { borderWidth: 1, borderRadius: 8, paddingHorizontal: 12, paddingVertical: 10, fontSize: 16, minHeight: 44 },
});
