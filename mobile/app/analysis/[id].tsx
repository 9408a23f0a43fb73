// Module 3 (detail) and 6 (result): the image with SAM's outline, the classification, delete. An
// automatic result (or a candidate picked from one: `from` = its id, `candidate` = the index) also shows
// the ranked candidates over the image; picking one analyses the same stored image with its box.
import { useLocalSearchParams, useRouter } from 'expo-router';
import { useEffect, useState } from 'react';
import { ActivityIndicator } from 'react-native';

import { analysisFinding, candidateAt, candidateKey, type AutoFinding } from '../../src/api/auto';
import type { Analysis, ServedClassifier } from '../../src/api/client';
import { AutoFindingCard, candidateMarks } from '../../src/components/AutoFinding';
import { forget, recall, remember } from '../../src/api/recent';
import { ImageCanvas } from '../../src/components/ImageCanvas';
import { ResultCard } from '../../src/components/ResultCard';
import { Body, Button, Card, Message, Page, Row } from '../../src/components/ui';
import { maskFromRle, overlayUri } from '../../src/image/mask';
import { errorMessage, useI18n } from '../../src/i18n';
import type { Box } from '../../src/roi/model';
import { useSession } from '../../src/session/SessionContext';

export default function AnalysisDetail() {
  const params = useLocalSearchParams<{ id: string; from?: string; candidate?: string }>();
  const { id } = params;
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
  // the automatic result this one belongs to: itself, or the one a candidate was picked from
  const [auto, setAuto] = useState<{ id: string; finding: AutoFinding; shown: number } | null>(null);
  const [picking, setPicking] = useState<number | null>(null);
  const [pickError, setPickError] = useState<string | null>(null);

  useEffect(() => {
    let live = true;
    void (async () => {
      try {
        const result = recall(id) ?? (await client.analysis(id));
        if (!live) return;
        setAnalysis(result);
        setPicking(null);
        const own = analysisFinding(result);
        if (own) setAuto({ id: result.id, finding: own, shown: 0 });
        else if (params.from) {
          // a candidate picked from an automatic result: show that result's candidates too (if it still exists)
          const source = recall(params.from) ?? (await client.analysis(params.from).catch(() => null));
          const finding = source ? analysisFinding(source) : null;
          if (!live) return;
          setAuto(source && finding ? { id: source.id, finding, shown: Number(params.candidate ?? 0) } : null);
        } else setAuto(null);
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
  }, [client, id, params.from, params.candidate, handleError, t]);

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

  /** Analyse the same stored image with candidate `index`'s box (candidate 1 is the automatic result itself). */
  const pick = async (index: number) => {
    if (!auto || !analysis || index === auto.shown || picking !== null) return;
    if (index === 0) {
      router.replace({ pathname: '/analysis/[id]', params: { id: auto.id } });
      return;
    }
    setPicking(index);
    setPickError(null);
    try {
      const box = auto.finding.candidates[index]!.box;
      const picked = await client.analyze(analysis.image_id, { box }, candidateKey(auto.id, index));
      remember(picked);
      router.replace({ pathname: '/analysis/[id]', params: { id: picked.id, from: auto.id, candidate: String(index) } });
    } catch (err) {
      handleError(err);
      setPickError(errorMessage(t, err));
      setPicking(null);
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
          overlays={outline ? [outline] : []} box={auto?.finding.candidates.length ? null : (analysis.segmentation.box as Box)} mode="pan"
          marks={auto ? candidateMarks(auto.finding, auto.shown) : undefined}
          onSelect={auto ? ([x, y]) => {
            const index = candidateAt(auto.finding.candidates, x, y);
            if (index !== null) void pick(index);
          } : undefined} />
      ) : (
        <ActivityIndicator />
      )}
      {auto ? (
        <AutoFindingCard finding={auto.finding} shown={auto.shown} busy={picking} error={pickError} onPick={(i) => void pick(i)}
          onDrawBox={() => router.push({
            pathname: '/analyze/[imageId]', params: { imageId: analysis.image_id, w: width, h: height, modality: analysis.modality },
          })} />
      ) : null}
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
