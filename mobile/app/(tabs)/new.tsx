// Module 2: choose an image (library, camera, file), check it, upload it with progress and cancel.
import { useRouter } from 'expo-router';
import { useRef, useState } from 'react';
import { StyleSheet, View } from 'react-native';

import { requestKey, type LocalFile, type Modality, type UploadHandle, type ImageOut } from '../../src/api/client';
import { ApiError } from '../../src/api/errors';
import { Body, Button, Card, Message, Notice, Page, Row, Title } from '../../src/components/ui';
import { errorMessage, useI18n } from '../../src/i18n';
import { useSession } from '../../src/session/SessionContext';
import { usePalette } from '../../src/theme';
import { head, pick, type Source } from '../../src/upload/pick';
import { checkUpload, DEFAULT_MAX_BYTES } from '../../src/upload/validate';

export default function NewAnalysis() {
  const { t } = useI18n();
  const palette = usePalette();
  const router = useRouter();
  const { client, config, handleError } = useSession();
  const [modality, setModality] = useState<Modality>('us');
  const [progress, setProgress] = useState<number | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [failed, setFailed] = useState<{ file: LocalFile; key: string } | null>(null);
  const upload = useRef<UploadHandle<ImageOut> | null>(null);
  const maxBytes = config?.max_upload_bytes ?? DEFAULT_MAX_BYTES;
  const maxMb = config?.max_upload_mb ?? 10;

  const send = async (file: LocalFile, key: string) => {
    setError(null);
    setFailed(null);
    setProgress(0);
    upload.current = client.upload(file, modality, key, setProgress);
    try {
      const image = await upload.current.promise;
      router.push({ pathname: '/analyze/[imageId]', params: { imageId: image.image_id, w: image.width, h: image.height, modality } });
    } catch (err) {
      handleError(err);
      setError(errorMessage(t, err, maxMb));
      // the same key on retry: the server answers with the image of the first attempt if it arrived
      if (err instanceof ApiError && ['network', 'busy', 'diskFull'].includes(err.kind)) setFailed({ file, key });
    } finally {
      setProgress(null);
      upload.current = null;
    }
  };

  const choose = async (source: Source) => {
    setError(null);
    setFailed(null);
    let file: LocalFile | null;
    try {
      file = await pick(source);
    } catch {
      setError(t('import.noCamera'));
      return;
    }
    if (!file) return;
    const problem = checkUpload(file, await head(file).catch(() => null), maxBytes);
    if (problem) {
      setError(problem.kind === 'tooLarge' ? t('errors.tooLarge', { mb: maxMb }) : t(problem.kind === 'empty' ? 'errors.empty' : 'errors.notAnImage'));
      return;
    }
    await send(file, requestKey());
  };

  const uploading = progress !== null;
  return (
    <Page>
      <Title>{t('import.title')}</Title>
      <Card>
        <Body>{t('import.modality')}</Body>
        <Row>
          {(['us', 'dm'] as const).map((m) => (
            <Button key={m} variant="secondary" selected={modality === m} label={t(`import.${m}`)}
              onPress={() => setModality(m)} disabled={uploading} testID={`modality-${m}`} />
          ))}
        </Row>
        <Row>
          <Button label={t('import.file')} onPress={() => choose('file')} disabled={uploading} testID="pick-file" />
          <Button variant="secondary" label={t('import.library')} onPress={() => choose('library')} disabled={uploading} testID="pick-library" />
          <Button variant="secondary" label={t('import.camera')} onPress={() => choose('camera')} disabled={uploading} testID="pick-camera" />
        </Row>
        <Body muted>{t('import.rules', { mb: maxMb })}</Body>
        {uploading ? (
          <View style={styles.gap}>
            <Body testID="upload-progress">{t('import.uploading', { pct: Math.round((progress ?? 0) * 100) })}</Body>
            <View accessibilityRole="progressbar" accessibilityValue={{ min: 0, max: 100, now: Math.round((progress ?? 0) * 100) }}
              style={[styles.track, { backgroundColor: palette.border }]}>
              <View style={[styles.fill, { width: `${(progress ?? 0) * 100}%`, backgroundColor: palette.primary }]} />
            </View>
            <Button variant="danger" label={t('import.cancelUpload')} onPress={() => upload.current?.cancel()} testID="cancel-upload" />
          </View>
        ) : null}
        <Message text={error} testID="import-error" />
        {failed ? <Button label={t('common.retry')} onPress={() => send(failed.file, failed.key)} testID="retry-upload" /> : null}
      </Card>
      <Notice />
    </Page>
  );
}

const styles = StyleSheet.create({
  gap: { gap: 8 },
  track: { height: 10, borderRadius: 5, overflow: 'hidden' },
  fill: { height: 10 },
});
