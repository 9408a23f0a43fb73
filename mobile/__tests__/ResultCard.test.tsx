// The result as a clinician reads it, rendered from a real server answer (recorded by
// scripts/record_fixtures.py: real models on BUSI "malignant (1)").
import { fireEvent, render, screen } from '@testing-library/react-native';
import { StyleSheet } from 'react-native';

import type { Analysis, Models } from '../src/api/client';
import { ResultCard, WEAK_AUC } from '../src/components/ResultCard';
import { I18nProvider, type Language } from '../src/i18n';
import analysisJson from './fixtures/analysis-us.json';
import modelsJson from './fixtures/models.json';

const analysis = analysisJson as unknown as Analysis;
const models = modelsJson as unknown as Models;
const byModality = (m: string) => models.classifiers.find((c) => c.modality === m)!;

function show(language: Language, classifier = byModality('us')) {
  return render(
    <I18nProvider initial={language}>
      <ResultCard analysis={analysis} classifier={classifier} />
    </I18nProvider>,
  );
}

const leftPercent = (testID: string) => {
  const style = StyleSheet.flatten(screen.getByTestId(testID).props.style) as { left?: string };
  return Number(String(style.left).replace('%', ''));
};

test('label, probability, threshold mark at the served threshold, and the notice', () => {
  show('en');
  expect(screen.getByTestId('result-label')).toHaveTextContent(analysis.label === 'malignant' ? 'Malignant' : 'Benign');
  expect(screen.getByTestId('result-probability')).toHaveTextContent(`Probability of malignancy: ${analysis.p_malignant.toFixed(2)}`);
  expect(leftPercent('threshold-mark')).toBeCloseTo(analysis.threshold * 100, 5);
  expect(screen.getByTestId('probability-bar').props.accessibilityValue.now).toBe(Math.round(analysis.p_malignant * 100));
  expect(screen.getByTestId('notice')).toHaveTextContent('Research use only. Not for clinical diagnosis.');
});

test('model name, version, sha256 prefix and its measured quality; the heat map toggles', () => {
  show('en');
  const model = analysis.models.classifier;
  expect(screen.getByTestId('model-line')).toHaveTextContent(`${model.name} · version ${model.version} · sha256 ${model.sha256.slice(0, 12)}`, { exact: false });
  const q = byModality('us').quality!;
  expect(screen.getByTestId('model-quality')).toHaveTextContent(`AUC ${q.cv_auc.toFixed(2)}`, { exact: false });
  expect(screen.getByTestId('model-quality')).toHaveTextContent(`sensitivity ${Math.round(q.sensitivity * 100)}%`, { exact: false });
  expect(screen.queryByTestId('weak-model')).toBeNull();
  expect(screen.getByTestId('roi-image')).toBeTruthy();
  fireEvent.press(screen.getByTestId('heatmap-toggle'));
  expect(screen.getByTestId('heatmap-image').props.source.uri).toBe(`data:image/png;base64,${analysis.heatmap_png}`);
});

test('the mammography model is flagged as weak, in Spanish too', () => {
  const dm = byModality('dm');
  expect(dm.quality!.cv_auc).toBeLessThan(WEAK_AUC);
  show('es', dm);
  expect(screen.getByTestId('weak-model')).toHaveTextContent('Este modelo es débil', { exact: false });
  expect(screen.getByTestId('notice')).toHaveTextContent('Solo para investigación. No apto para diagnóstico clínico.');
});

test('no recorded quality says so instead of inventing one', () => {
  show('en', { ...byModality('us'), quality: null });
  expect(screen.getByTestId('model-quality')).toHaveTextContent('No measured quality is recorded for this model.');
});

test('while the served models load, the quality line says so instead of "none recorded"', () => {
  render(
    <I18nProvider initial="en">
      <ResultCard analysis={analysis} classifier={undefined} />
    </I18nProvider>,
  );
  expect(screen.getByTestId('model-quality-loading')).toHaveTextContent('Loading…');
  expect(screen.queryByTestId('model-quality')).toBeNull();
});

test('what the recipe did at a hospital it never saw is shown next to the cross-validation', () => {
  const us = byModality('us');
  const unseen = { site: 'busbra', trained_on: ['busi'], n: 902, auc: 0.845, auc_ci: [0.81, 0.88] as [number, number],
    sensitivity: 0.812, specificity: 0.7, ece: 0.09 };
  show('en', { ...us, quality: { ...us.quality!, out_of_site: [unseen] } });
  expect(screen.getByTestId('out-of-site-busbra')).toHaveTextContent(
    'Its recipe, trained on BUSI only and tested on BUS-BRA, a hospital it never saw: AUC 0.84 (95% CI 0.81–0.88); sensitivity 81%, specificity 70%.');
});

test('a model trained on two sites shows each site\'s cross-validation; one site shows none apart', () => {
  const us = byModality('us');
  const site = (name: string, auc: number) => ({ site: name, n: 600, auc, auc_ci: [auc - 0.03, auc + 0.02] as [number, number],
    sensitivity: 0.9, specificity: 0.65 });
  show('es', { ...us, quality: { ...us.quality!, sites: [site('busbra', 0.871), site('busi', 0.944)] } });
  expect(screen.getByTestId('site-quality-busbra')).toHaveTextContent(
    'BUS-BRA, en validación cruzada: AUC 0.87 (IC 95 % 0.84–0.89); sensibilidad 90%, especificidad 65%.');
  expect(screen.getByTestId('site-quality-busi')).toHaveTextContent('BUSI, en validación cruzada: AUC 0.94', { exact: false });
  screen.unmount();
  show('en', { ...us, quality: { ...us.quality!, sites: [site('busi', 0.944)] } });
  expect(screen.queryByTestId('site-quality-busi')).toBeNull();
});
