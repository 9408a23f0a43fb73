// Module 6: benign or malignant, the calibrated probability against the served threshold, what the
// model saw, its heat map, which model answered and how good that model measured.
import { useState } from 'react';
import { Image, StyleSheet, Text, View } from 'react-native';

import type { Analysis, ServedClassifier } from '../api/client';
import { useI18n } from '../i18n';
import { usePalette } from '../theme';
import { Body, Button, Card, Notice } from './ui';

/** Below this cross-validated AUC a model's answers are flagged as weak on screen. */
export const WEAK_AUC = 0.8;

const pct = (v: number) => `${(v * 100).toFixed(0)}%`;
const SITE_NAMES: Record<string, string> = { busi: 'BUSI', busbra: 'BUS-BRA', mias: 'mini-MIAS' };
const siteName = (site: string) => SITE_NAMES[site] ?? site;
const fixed = (v: number | null | undefined) => (v === null || v === undefined ? '–' : v.toFixed(2));
const percent = (v: number | null | undefined) => (v === null || v === undefined ? '–' : pct(v));

export function ProbabilityBar({ p, threshold }: { p: number; threshold: number }) {
  const palette = usePalette();
  const { t } = useI18n();
  const color = p >= threshold ? palette.malignant : palette.benign;
  return (
    <View accessible accessibilityRole="progressbar" accessibilityLabel={t('result.probability', { p: p.toFixed(2) })}
      accessibilityValue={{ min: 0, max: 100, now: Math.round(p * 100) }} testID="probability-bar" style={styles.barWrap}>
      <View style={[styles.bar, { backgroundColor: palette.border }]}>
        <View style={[styles.fill, { width: `${p * 100}%`, backgroundColor: color }]} />
        <View testID="threshold-mark" style={[styles.mark, { left: `${threshold * 100}%`, backgroundColor: palette.text }]} />
      </View>
      <View style={styles.scale}>
        <Text style={{ color: palette.muted }}>0</Text>
        <Text style={{ color: palette.muted }}>1</Text>
      </View>
    </View>
  );
}

/** `classifier`: undefined while /v1/models is loading, null when no served model has this sha256. */
export function QualityLine({ classifier }: { classifier: ServedClassifier | null | undefined }) {
  const { t } = useI18n();
  if (classifier === undefined) return <Body muted testID="model-quality-loading">{t('common.loading')}</Body>;
  const q = classifier?.quality;
  if (!q) return <Body muted testID="model-quality">{t('result.qualityUnknown')}</Body>;
  const [lo, hi] = q.cv_auc_ci;
  return (
    <View style={styles.gap}>
      <Body muted testID="model-quality">
        {t('result.quality', {
          folds: q.folds, auc: q.cv_auc.toFixed(2), lo: (lo ?? 0).toFixed(2), hi: (hi ?? 0).toFixed(2),
          sens: pct(q.sensitivity), spec: pct(q.specificity),
        })}
      </Body>
      {(q.sites ?? []).length > 1 && (q.sites ?? []).map((s) => (
        <Body muted key={s.site} testID={`site-quality-${s.site}`}>
          {t('result.siteQuality', {
            site: siteName(s.site), auc: fixed(s.auc), lo: fixed(s.auc_ci?.[0]), hi: fixed(s.auc_ci?.[1]),
            sens: percent(s.sensitivity), spec: percent(s.specificity),
          })}
        </Body>
      ))}
      {(q.out_of_site ?? []).map((o) => (
        <Body muted key={`${o.site}-${o.trained_on.join('+')}`} testID={`out-of-site-${o.site}`}>
          {t('result.outOfSite', {
            site: siteName(o.site), trained: o.trained_on.map(siteName).join(', '), auc: fixed(o.auc),
            lo: fixed(o.auc_ci?.[0]), hi: fixed(o.auc_ci?.[1]), sens: percent(o.sensitivity), spec: percent(o.specificity),
          })}
        </Body>
      ))}
      {q.cv_auc < WEAK_AUC ? <Text testID="weak-model" style={styles.weak}>{t('result.weak')}</Text> : null}
    </View>
  );
}

export function ResultCard({ analysis, classifier }: { analysis: Analysis; classifier: ServedClassifier | null | undefined }) {
  const { t } = useI18n();
  const palette = usePalette();
  const [heatmap, setHeatmap] = useState(false);
  const malignant = analysis.label === 'malignant';
  const model = analysis.models.classifier;
  return (
    <Card>
      <Text accessibilityRole="header" testID="result-label"
        style={[styles.label, { color: malignant ? palette.malignant : palette.benign }]}>
        {t(malignant ? 'result.malignant' : 'result.benign')}
      </Text>
      <Body testID="result-probability">{t('result.probability', { p: analysis.p_malignant.toFixed(2) })}</Body>
      <ProbabilityBar p={analysis.p_malignant} threshold={analysis.threshold} />
      <Body muted>{t('result.threshold', { t: analysis.threshold.toFixed(2) })}</Body>
      <View style={styles.crops}>
        <View style={styles.gap}>
          <Body muted>{t(heatmap ? 'result.heatmap' : 'result.roi')}</Body>
          <Image
            accessibilityLabel={t(heatmap ? 'result.heatmap' : 'result.roi')}
            testID={heatmap ? 'heatmap-image' : 'roi-image'}
            source={{ uri: `data:image/png;base64,${heatmap ? analysis.heatmap_png : analysis.roi_png}` }}
            style={styles.crop}
          />
        </View>
      </View>
      <Button variant="secondary" selected={heatmap} label={t('result.heatmap')} onPress={() => setHeatmap(!heatmap)} testID="heatmap-toggle" />
      <Body muted testID="model-line">
        {t('result.model', { name: model.name, version: model.version, sha: model.sha256.slice(0, 12) })}
      </Body>
      <QualityLine classifier={classifier} />
      <Body muted>{t('result.segmentation', { sam: analysis.segmentation.sam_model, score: analysis.segmentation.score.toFixed(2) })}</Body>
      <Notice />
    </Card>
  );
}

const styles = StyleSheet.create({
  label: { fontSize: 28, fontWeight: '800' },
  barWrap: { gap: 2 },
  bar: { height: 18, borderRadius: 9, overflow: 'visible', position: 'relative' },
  fill: { position: 'absolute', left: 0, top: 0, bottom: 0, borderRadius: 9 },
  mark: { position: 'absolute', top: -4, bottom: -4, width: 3, marginLeft: -1.5 },
  scale: { flexDirection: 'row', justifyContent: 'space-between' },
  crops: { flexDirection: 'row', gap: 12 },
  crop: { width: 160, height: 160, borderRadius: 6, backgroundColor: '#000' },
  gap: { gap: 4 },
  weak: { color: '#b3261e', fontWeight: '700' },
});
