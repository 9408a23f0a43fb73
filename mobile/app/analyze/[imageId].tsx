// Modules 4 and 5: mark the lesion (box, points, brush; undo, clear), SAM's outline on every change,
// then classify; or draw nothing and let the server find, outline and classify the lesion itself
// ("find lesion automatically"), which may answer that it found none.
import { useLocalSearchParams, useRouter } from 'expo-router';
import { useEffect, useMemo, useRef, useState } from 'react';
import { ActivityIndicator, StyleSheet, View } from 'react-native';

import { AUTO_PROMPT, servesFinder } from '../../src/api/auto';
import { requestKey, type Segmentation } from '../../src/api/client';
import { ApiError } from '../../src/api/errors';
import { remember } from '../../src/api/recent';
import { ImageCanvas, type DrawMode } from '../../src/components/ImageCanvas';
import { Body, Button, Card, Message, Notice, Page, Row } from '../../src/components/ui';
import { maskFromRle, overlayUri } from '../../src/image/mask';
import { errorMessage, useI18n, type Key } from '../../src/i18n';
import * as roiModel from '../../src/roi/model';
import { useSession } from '../../src/session/SessionContext';

const MODES: Record<roiModel.Tool, DrawMode> = { box: 'drag', lesion: 'tap', background: 'tap', brush: 'paint', pan: 'pan' };
const HINTS: Record<roiModel.Tool, Key> = {
  box: 'roi.hint.box', lesion: 'roi.hint.points', background: 'roi.hint.points', brush: 'roi.hint.brush', pan: 'roi.hint.pan',
};
const OUTLINE: [number, number, number] = [231, 76, 60];
const BRUSH: [number, number, number] = [52, 152, 219];
/** When the server has not said whether it serves a lesion finder: after this many seconds the search says why it may be slow. */
const SLOW_AFTER_S = 5;

export default function Analyze() {
  const params = useLocalSearchParams<{ imageId: string; w: string; h: string; modality: string }>();
  const width = Number(params.w);
  const height = Number(params.h);
  const { t } = useI18n();
  const router = useRouter();
  const { client, handleError } = useSession();
  const [uri, setUri] = useState<string | null>(null);
  const [roi, setRoi] = useState(() => roiModel.emptyRoi(width, height));
  const [tool, setTool] = useState<roiModel.Tool>('box');
  const [result, setResult] = useState<{ prompt: string; segmentation: Segmentation } | null>(null);
  const [stroke, setStroke] = useState<roiModel.RoiAction | null>(null);
  const [busy, setBusy] = useState<'outline' | 'auto' | 'classify' | null>(null);
  const [elapsed, setElapsed] = useState(0);
  const [error, setError] = useState<string | null>(null);
  const [noLesion, setNoLesion] = useState<string | null>(null);
  // whether `{}` runs a lesion finder here (fast) or SAM's generator (minutes); null until known
  const [finder, setFinder] = useState<boolean | null>(null);
  const request = useRef(0);
  const classifyKey = useRef<{ prompt: string; key: string } | null>(null);
  const brushRadius = Math.max(3, Math.round(Math.max(width, height) / 60));

  useEffect(() => {
    client.imageUri(params.imageId).then(setUri, (err) => {
      handleError(err);
      setError(errorMessage(t, err));
    });
  }, [client, params.imageId, handleError, t]);

  useEffect(() => {
    let live = true;
    client.models().then((models) => live && setFinder(servesFinder(models, params.modality)), () => undefined);
    return () => {
      live = false;
    };
  }, [client, params.modality]);

  const prompt = useMemo(() => roiModel.toPrompt(roi), [roi]);
  const promptJson = JSON.stringify(prompt);
  // The brush strokes so far, with the one being painted; drawn, but sent to SAM only when it ends.
  const brushOverlay = useMemo(() => {
    const mask = roiModel.brushMask(stroke ? roiModel.add(roi, stroke) : roi);
    return mask ? overlayUri(mask, BRUSH) : null;
  }, [roi, stroke]);
  const drawn = promptJson !== '{}';
  // The outline shown belongs to the current prompt.
  const current = result && result.prompt === promptJson ? result : null;
  const segmentation = current?.segmentation ?? null;
  const outline = useMemo(
    () => (segmentation ? overlayUri(maskFromRle(segmentation.mask_rle.size, segmentation.mask_rle.counts), OUTLINE) : null),
    [segmentation],
  );

  async function outlineFor(p: roiModel.Prompt, key: string) {
    const id = ++request.current;
    setBusy('outline');
    setError(null);
    setNoLesion(null);
    try {
      const seg = await client.segment(params.imageId, p);
      if (id !== request.current) return;
      setResult({ prompt: key, segmentation: seg });
    } catch (err) {
      if (id !== request.current) return;
      handleError(err);
      setError(errorMessage(t, err));
      setResult(null);
    } finally {
      if (id === request.current) setBusy(null);
    }
  }

  /** The drawn prompt, or `{}`: the server finds the lesion itself (its lesion finder, else SAM's automatic mode). */
  async function classify(chosen: roiModel.Prompt) {
    const automatic = Object.keys(chosen).length === 0;
    const chosenJson = JSON.stringify(chosen);
    // one key per prompt: a retry of the same prompt cannot create a second analysis
    if (classifyKey.current?.prompt !== chosenJson) classifyKey.current = { prompt: chosenJson, key: requestKey() };
    setBusy(automatic ? 'auto' : 'classify');
    setError(null);
    setNoLesion(null);
    setElapsed(0);
    const started = Date.now();
    const timer = automatic ? setInterval(() => setElapsed(Math.round((Date.now() - started) / 1000)), 500) : null;
    try {
      const analysis = await client.analyze(params.imageId, chosen, classifyKey.current.key);
      remember(analysis);
      router.push({ pathname: '/analysis/[id]', params: { id: analysis.id } });
    } catch (err) {
      handleError(err);
      // no lesion found is an answer, not a failure: said calmly, with the way to draw one
      if (err instanceof ApiError && err.kind === 'noLesion') setNoLesion(errorMessage(t, err));
      else setError(errorMessage(t, err));
    } finally {
      if (timer) clearInterval(timer);
      setBusy(null);
    }
  }

  // A new outline whenever the committed ROI changes; answers to older prompts are dropped.
  useEffect(() => {
    // the request is the external system synced here; its busy flag is set as it starts
    // eslint-disable-next-line react-hooks/set-state-in-effect
    if (promptJson !== '{}') void outlineFor(JSON.parse(promptJson) as roiModel.Prompt, promptJson);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [promptJson]);

  const drawnBox = roiModel.currentBox(roi);
  const looseness = drawnBox && segmentation?.prompt === 'box' ? roiModel.boxLooseness(drawnBox, segmentation.box) : 1;

  return (
    <Page>
      <Card>
        <Body testID="roi-intro">{t('roi.intro')}</Body>
        <Row>
          {(['box', 'lesion', 'background', 'brush', 'pan'] as const).map((k) => (
            <Button key={k} variant="secondary" selected={tool === k} label={t(`roi.tool.${k}`)} onPress={() => setTool(k)} testID={`tool-${k}`} />
          ))}
        </Row>
        <Body muted>{t(HINTS[tool])}</Body>
        {uri ? (
          <ImageCanvas
            uri={uri}
            width={width}
            height={height}
            label={t('roi.title')}
            overlays={[brushOverlay, outline].filter((o): o is string => o !== null)}
            box={drawnBox ?? (segmentation && roiModel.currentKind(roi) !== 'box' ? (segmentation.box as roiModel.Box) : null)}
            points={roiModel.currentPoints(roi)}
            mode={MODES[tool]}
            onDragEnd={(a, b) => {
              const box = roiModel.boxFromDrag(roi, a, b);
              if (box) setRoi(roiModel.add(roi, { kind: 'box', box }));
            }}
            onTap={([x, y]) => setRoi(roiModel.add(roi, { kind: 'point', x, y, lesion: tool === 'lesion' }))}
            onPaintStart={(at) => setStroke({ kind: 'stroke', points: [at], radius: brushRadius })}
            onPaint={(at) => setStroke((s) => (s?.kind === 'stroke' ? { ...s, points: [...s.points, at] } : s))}
            onPaintEnd={() => {
              if (stroke) setRoi(roiModel.add(roi, stroke));
              setStroke(null);
            }}
          />
        ) : (
          <ActivityIndicator />
        )}
        <Row>
          <Button variant="secondary" label={t('roi.undo')} onPress={() => setRoi(roiModel.undo(roi))} disabled={!roi.actions.length} testID="undo" />
          <Button variant="secondary" label={t('roi.clear')} onPress={() => setRoi(roiModel.clear(roi))} disabled={!roi.actions.length} testID="clear" />
        </Row>
        {busy === 'outline' ? <Message kind="info" text={t('roi.outlining')} testID="outlining" /> : null}
        {looseness > roiModel.LOOSE_BOX ? <Message kind="warning" text={t('roi.looseBox', { times: looseness.toFixed(1) })} testID="loose-box" /> : null}
        {drawn && !segmentation && !busy ? <Body muted>{t('roi.noOutline')}</Body> : null}
        {segmentation ? (
          <Body muted testID="segmentation-info">{t('result.segmentation', { sam: segmentation.sam_model, score: segmentation.score.toFixed(2) })}</Body>
        ) : null}
        <Message text={error} testID="analyze-error" />
        {noLesion ? (
          <View style={styles.noLesion}>
            <Message kind="warning" text={noLesion} testID="no-lesion" />
            <Button label={t('roi.drawBox')} onPress={() => { setTool('box'); setNoLesion(null); }} testID="no-lesion-draw" />
          </View>
        ) : null}
        {drawn ? (
          <Button label={t(busy === 'classify' ? 'roi.classifying' : 'roi.classify')} onPress={() => classify(prompt)}
            busy={busy === 'classify'} disabled={!segmentation || busy !== null} testID="classify" />
        ) : null}
        <Button variant={drawn ? 'secondary' : 'primary'} label={t('roi.auto')} onPress={() => classify(AUTO_PROMPT)}
          busy={busy === 'auto'} disabled={busy !== null} testID="auto" />
        {busy === 'auto' ? (
          <Message kind="info" testID="auto-running"
            text={finder === false || (finder === null && elapsed >= SLOW_AFTER_S) ? `${t('roi.autoRunning', { s: elapsed })} ${t('roi.autoSlow')}` : t('roi.autoRunning', { s: elapsed })} />
        ) : !drawn && !noLesion ? <Body muted testID="auto-hint">{t(finder === false ? 'roi.autoHintSlow' : 'roi.autoHint')}</Body> : null}
      </Card>
      <Notice />
    </Page>
  );
}

const styles = StyleSheet.create({
  noLesion: { gap: 8 },
});
