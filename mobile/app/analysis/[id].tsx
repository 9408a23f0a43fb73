// Module 3 (detail) and 6 (result): the image with SAM's outline, the classification, delete.
import { useLocalSearchParams, useRouter } from 'expo-router';
import { useEffect, useState } from 'react';
import { ActivityIndicator } from 'react-native';

import type { Analysis, ServedClassifier } from '../../src/api/client';
import { forget, recall } from '../../src/api/recent';
import { ImageCanvas } from '../../src/components/ImageCanvas';
import { ResultCard } from '../../src/components/ResultCard';
import { Body, Button, Card, Message, Page, Row } from '../../src/components/ui';
import { maskFromRle, overlayUri } from '../../src/image/mask';
import { errorMessage, useI18n } from '../../src/i18n';
import type { Box } from '../../src/roi/model';
import { useSession } from '../../src/session/SessionContext';

export default function AnalysisDetail() {
  const { id } = useLocalSearchParams<{ id: string }>();
  const { t, language } = useI18n();
  const router = useRouter();
  const { client, handleError } = useSession();
  const [analysis, setAnalysis] = useState<Analysis | null>(() => recall(id));
  const [classifier, setClassifier] = useState<ServedClassifier | null | undefined>(undefined);
  const [uri, setUri] = useState<string | null>(null);
  const [outline, setOutline] = useState<string | null>(null);
  const [confirming, setConfirming] = useState(false);
  const [deleting, setDeleting] = useState(false);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    let live = true;
    void (async () => {
      try {
        const result = recall(id) ?? (await client.analysis(id));
        if (!live) return;
        setAnalysis(result);
        const [image, models] = await Promise.all([client.imageUri(result.image_id), client.models()]);
        if (!live) return;
        setUri(image);
        // the quality of the very model that answered (same sha256), not of whatever is served now
        setClassifier(models.classifiers.find((c) => c.sha256 === result.models.classifier.sha256) ?? null);
      } catch (err) {
        handleError(err);
        if (live) setError(errorMessage(t, err));
      }
    })();
    return () => {
      live = false;
    };
  }, [client, id, handleError, t]);

  // The outline is drawn after the result is on screen: the label should not wait for it.
  useEffect(() => {
    if (!analysis) return;
    const seg = analysis.segmentation;
    const timer = setTimeout(() => setOutline(overlayUri(maskFromRle(seg.mask_rle.size, seg.mask_rle.counts), [231, 76, 60])), 0);
    return () => clearTimeout(timer);
  }, [analysis]);

  const remove = async () => {
    setDeleting(true);
    try {
      await client.deleteAnalysis(id);
      forget(id);
      router.replace('/history');
    } catch (err) {
      handleError(err);
      setError(errorMessage(t, err));
      setDeleting(false);
      setConfirming(false);
    }
  };

  if (!analysis) {
    return <Page>{error ? <Message text={error} testID="detail-error" /> : <ActivityIndicator />}</Page>;
  }
  const [height, width] = analysis.segmentation.mask_rle.size as [number, number];
  return (
    <Page>
      <Body muted>{`${new Date(analysis.created).toLocaleString(language)} · ${analysis.modality.toUpperCase()}`}</Body>
      {uri ? (
        <ImageCanvas uri={uri} width={width} height={height} label={t('result.title')}
          overlays={outline ? [outline] : []} box={analysis.segmentation.box as Box} mode="pan" />
      ) : (
        <ActivityIndicator />
      )}
      <ResultCard analysis={analysis} classifier={classifier} />
      <Message text={error} testID="detail-error" />
      <Card>
        {confirming ? (
          <>
            <Body>{t('history.deleteConfirm')}</Body>
            <Row>
              <Button variant="secondary" label={t('common.cancel')} onPress={() => setConfirming(false)} testID="cancel-delete" />
              <Button variant="danger" label={t('common.delete')} onPress={remove} busy={deleting} testID="confirm-delete" />
            </Row>
          </>
        ) : (
          <Button variant="danger" label={t('common.delete')} onPress={() => setConfirming(true)} testID="delete" />
        )}
      </Card>
    </Page>
  );
}
