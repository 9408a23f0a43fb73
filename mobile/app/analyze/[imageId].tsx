// Modules 4 and 5: mark the lesion (box, points, brush; undo, clear), SAM's outline on every change,
// "find the lesion" for the automatic mode; then classify.
import { useLocalSearchParams, useRouter } from 'expo-router';
import { useEffect, useMemo, useRef, useState } from 'react';
import { ActivityIndicator } from 'react-native';

import { requestKey, type Segmentation } from '../../src/api/client';
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
const AUTO = 'auto';

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
  const request = useRef(0);
  const classifyKey = useRef<{ prompt: string; key: string } | null>(null);
  const brushRadius = Math.max(3, Math.round(Math.max(width, height) / 60));

  useEffect(() => {
    client.imageUri(params.imageId).then(setUri, (err) => {
      handleError(err);
      setError(errorMessage(t, err));
    });
  }, [client, params.imageId, handleError, t]);

  const prompt = useMemo(() => roiModel.toPrompt(roi), [roi]);
  const promptJson = JSON.stringify(prompt);
  // The brush strokes so far, with the one being painted; drawn, but sent to SAM only when it ends.
  const brushOverlay = useMemo(() => {
    const mask = roiModel.brushMask(stroke ? roiModel.add(roi, stroke) : roi);
    return mask ? overlayUri(mask, BRUSH) : null;
  }, [roi, stroke]);
  // The outline shown belongs to the current prompt (or to "find the lesion" while nothing is drawn).
  const current = result && (result.prompt === promptJson || (result.prompt === AUTO && promptJson === '{}')) ? result : null;
  const segmentation = current?.segmentation ?? null;
  const outline = useMemo(
    () => (segmentation ? overlayUri(maskFromRle(segmentation.mask_rle.size, segmentation.mask_rle.counts), OUTLINE) : null),
    [segmentation],
  );

  // A new outline whenever the committed ROI changes; answers to older prompts are dropped.
  useEffect(() => {
    if (promptJson !== '{}') void outlineFor(JSON.parse(promptJson) as roiModel.Prompt, promptJson);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [promptJson]);

  async function outlineFor(p: roiModel.Prompt, key: string) {
    const kind = key === AUTO ? 'auto' : 'outline';
    const id = ++request.current;
    setBusy(kind);
    setError(null);
    const started = Date.now();
    const timer = kind === 'auto' ? setInterval(() => setElapsed(Math.round((Date.now() - started) / 1000)), 500) : null;
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
      if (timer) clearInterval(timer);
      if (id === request.current) setBusy(null);
    }
  }

  async function classify() {
    // After "find the lesion" nothing is drawn: the found outline's box is the prompt (fast, same lesion).
    const chosen: roiModel.Prompt = promptJson === '{}' && segmentation ? { box: segmentation.box } : prompt;
    const chosenJson = JSON.stringify(chosen);
    // one key per prompt: a retry of the same prompt cannot create a second analysis
    if (classifyKey.current?.prompt !== chosenJson) classifyKey.current = { prompt: chosenJson, key: requestKey() };
    setBusy('classify');
    setError(null);
    try {
      const analysis = await client.analyze(params.imageId, chosen, classifyKey.current.key);
      remember(analysis);
      router.push({ pathname: '/analysis/[id]', params: { id: analysis.id } });
    } catch (err) {
      handleError(err);
      setError(errorMessage(t, err));
    } finally {
      setBusy(null);
    }
  }

  const drawnBox = roiModel.currentBox(roi);
  const looseness = drawnBox && segmentation?.prompt === 'box' ? roiModel.boxLooseness(drawnBox, segmentation.box) : 1;

  return (
    <Page>
      <Card>
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
          <Button variant="secondary" label={t('roi.auto')} onPress={() => { setRoi(roiModel.clear(roi)); void outlineFor({}, AUTO); }}
            disabled={busy !== null} testID="auto" />
        </Row>
        {busy === 'outline' ? <Message kind="info" text={t('roi.outlining')} testID="outlining" /> : null}
        {busy === 'auto' ? (
          <Row>
            <ActivityIndicator />
            <Message kind="info" text={`${t('roi.autoRunning', { s: elapsed })} ${t('roi.autoSlow')}`} testID="auto-running" />
          </Row>
        ) : null}
        {looseness > roiModel.LOOSE_BOX ? <Message kind="warning" text={t('roi.looseBox', { times: looseness.toFixed(1) })} testID="loose-box" /> : null}
        {!segmentation && !busy ? <Body muted>{t('roi.noOutline')}</Body> : null}
        {segmentation ? (
          <Body muted testID="segmentation-info">{t('result.segmentation', { sam: segmentation.sam_model, score: segmentation.score.toFixed(2) })}</Body>
        ) : null}
        <Message text={error} testID="analyze-error" />
        <Button label={t(busy === 'classify' ? 'roi.classifying' : 'roi.classify')} onPress={classify}
          busy={busy === 'classify'} disabled={!segmentation || busy !== null} testID="classify" />
      </Card>
      <Notice />
    </Page>
  );
}
