import { useState } from 'react';

import { Body, Button, Card, Message, Notice, Page, Row, Title } from '../../src/components/ui';
import { LANGUAGES, useI18n } from '../../src/i18n';
import { useSession } from '../../src/session/SessionContext';

export default function Profile() {
  const { t, language, setLanguage } = useI18n();
  const session = useSession();
  const { stored } = session;
  const [sent, setSent] = useState(false);
  return (
    <Page>
      <Title>{t('profile.title')}</Title>
      <Card>
        <Body testID="profile-user">{`${t('profile.user')}: ${stored.name ?? ''}`}</Body>
        <Body testID="profile-role">{`${t('profile.role')}: ${t(stored.role === 'admin' ? 'profile.role.admin' : 'profile.role.clinician')}`}</Body>
        <Body>{`${t('profile.server')}: ${stored.server}`}</Body>
        {session.emailVerified !== null ? (
          <Body testID="profile-email-verified">{t(session.emailVerified ? 'profile.emailVerified' : 'profile.emailNotVerified')}</Body>
        ) : null}
        {session.emailVerified === false ? (
          <Row>
            <Button variant="secondary" label={t('profile.sendVerification')} testID="send-verification"
              onPress={() => void session.sendVerification().then(() => setSent(true), () => setSent(false))} />
            {sent ? <Message kind="info" text={t('profile.verificationSent')} /> : null}
          </Row>
        ) : null}
        {stored.expiresAt ? <Body muted>{`${t('profile.expires')}: ${new Date(stored.expiresAt).toLocaleString(language)}`}</Body> : null}
      </Card>
      <Card>
        <Body>{t('profile.language')}</Body>
        <Row>
          {LANGUAGES.map((l) => (
            <Button key={l} variant="secondary" selected={language === l} label={l === 'en' ? 'English' : 'Español'}
              onPress={() => { setLanguage(l); session.setLanguage(l); }} testID={`language-${l}`} />
          ))}
        </Row>
      </Card>
      <Button variant="danger" label={t('profile.signOut')} onPress={() => void session.signOut()} testID="sign-out" />
      <Notice />
    </Page>
  );
}
