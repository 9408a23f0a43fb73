// An automatic result says so: which finder found the lesion, its score against its threshold in
// plain words, the ranked candidates (numbered, in their boxes' colours) to analyse another one
// instead, and the way back to drawing a box.
import { Pressable, StyleSheet, Text, View } from 'react-native';

import { candidateColor, scorePair, type AutoFinding } from '../api/auto';
import { useI18n } from '../i18n';
import type { Box } from '../roi/model';
import { usePalette } from '../theme';
import type { CanvasMark } from './ImageCanvas';
import { Body, Button, Card, Message } from './ui';

/** The candidates as numbered boxes for the image canvas; `shown` is drawn solid. */
export function candidateMarks(finding: AutoFinding, shown: number): CanvasMark[] {
  return finding.candidates.map((c, i) => ({
    box: c.box as Box, tag: String(i + 1), color: candidateColor(i), strong: i === shown, testID: `candidate-box-${i + 1}`,
  }));
}

export function AutoFindingCard(props: {
  finding: AutoFinding;
  /** index of the candidate whose result is on screen */
  shown: number;
  /** index being analysed now, if any */
  busy: number | null;
  error: string | null;
  onPick: (index: number) => void;
  onDrawBox: () => void;
}) {
  const { t } = useI18n();
  const palette = usePalette();
  const { finding, shown, busy } = props;
  const { score, threshold } = finding;
  const picked = finding.candidates[shown];
  const explanation =
    finding.mode === 'localiser'
      ? score !== null && threshold !== null
        ? t('auto.localiser', scorePair(score, threshold))
        : t('auto.localiserNoScore')
      : finding.mode === 'sam-amg' ? t('auto.samAmg') : t('auto.generic');
  return (
    <Card>
      <Text accessibilityRole="header" testID="auto-title" style={[styles.title, { color: palette.text }]}>
        {shown > 0 ? t('auto.pickedTitle', { n: shown + 1 }) : t('auto.title')}
      </Text>
      {shown > 0 && picked ? (
        <Body testID="auto-picked">
          {t('auto.picked', { n: shown + 1, ...(threshold === null ? { score: picked.score.toFixed(2), threshold: '–' } : scorePair(picked.score, threshold)) })}
        </Body>
      ) : (
        <Body testID="auto-found">{explanation}</Body>
      )}
      {finding.candidates.length > 1 ? (
        <>
          <Body muted>{t('auto.candidates')}</Body>
          <View style={styles.list} accessibilityRole="list">
            {finding.candidates.map((c, i) => {
              const params = { n: i + 1, score: c.score.toFixed(2) };
              const selected = i === shown;
              return (
                <Pressable key={i} accessibilityRole="button" testID={`candidate-${i + 1}`}
                  accessibilityLabel={t(selected ? 'auto.candidateShown' : 'auto.candidateLabel', params)}
                  accessibilityState={{ selected, busy: busy === i, disabled: busy !== null }}
                  disabled={busy !== null} onPress={() => props.onPick(i)}
                  style={({ pressed }) => [styles.candidate, {
                    borderColor: candidateColor(i), backgroundColor: selected ? palette.border : 'transparent',
                    opacity: busy !== null && busy !== i ? 0.5 : pressed ? 0.8 : 1,
                  }]}>
                  <View style={[styles.swatch, { backgroundColor: candidateColor(i) }]} />
                  <Text style={[styles.candidateText, { color: palette.text, fontWeight: selected ? '800' : '600' }]}>
                    {t('auto.candidate', params)}
                  </Text>
                </Pressable>
              );
            })}
          </View>
        </>
      ) : finding.mode === 'localiser' ? <Body muted testID="auto-one-candidate">{t('auto.onlyOne')}</Body> : null}
      {finding.model ? (
        <Body muted testID="finder-model">
          {t('auto.model', { name: finding.model.name, version: finding.model.version, sha: finding.model.sha256.slice(0, 12) })}
        </Body>
      ) : null}
      {busy !== null ? <Message kind="info" text={t('auto.analysing', { n: busy + 1 })} testID="candidate-analysing" /> : null}
      <Message text={props.error} testID="candidate-error" />
      <Button variant="secondary" label={t('auto.drawInstead')} onPress={props.onDrawBox} testID="draw-instead" />
    </Card>
  );
}

const styles = StyleSheet.create({
  title: { fontSize: 18, fontWeight: '700' },
  list: { flexDirection: 'row', flexWrap: 'wrap', gap: 8 },
  candidate: {
    minHeight: 44, paddingHorizontal: 12, paddingVertical: 8, borderRadius: 10, borderWidth: 2,
    flexDirection: 'row', alignItems: 'center', gap: 8,
  },
  swatch: { width: 14, height: 14, borderRadius: 3 },
  candidateText: { fontSize: 15 },
});
