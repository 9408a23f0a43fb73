import { Body, Card, Notice, Page, Title } from '../../src/components/ui';
import { useI18n } from '../../src/i18n';

export default function Help() {
  const { t } = useI18n();
  return (
    <Page>
      <Title>{t('help.title')}</Title>
      <Notice />
      <Card><Body>{t('help.steps')}</Body></Card>
      <Card><Body>{t('help.probability')}</Body></Card>
      <Card><Body>{t('help.heatmap')}</Body></Card>
      <Card><Body>{t('help.quality')}</Body></Card>
    </Page>
  );
}
