// Automatic lesion finding on screen: the finder's score against its threshold in words, the ranked
// candidates (numbered, labelled, pickable), "no lesion found" as a calm answer with its score.
import { fireEvent, render, screen } from '@testing-library/react-native';

import { autoFinding, candidateAt, candidateKey, noLesionScore, servesFinder, type AutoFinding } from '../src/api/auto';
import { Client, type Models, type Segmentation } from '../src/api/client';
import { ApiError, fromResponse } from '../src/api/errors';
import { AutoFindingCard, candidateMarks } from '../src/components/AutoFinding';
import { errorMessage, I18nProvider, translator, type Language } from '../src/i18n';
import analysisJson from './fixtures/analysis-us.json';

const drawn = analysisJson.segmentation as unknown as Segmentation;
const automatic = {
  ...drawn, prompt: 'auto', auto_mode: 'localiser', lesion_score: 0.873, lesion_threshold: 0.41,
  candidates: [{ box: [10, 20, 110, 90], score: 0.873 }, { box: [200, 40, 260, 100], score: 0.52 }, { box: [30, 30, 60, 60], score: 0.44 }],
} as unknown as Segmentation;

function show(finding: AutoFinding, language: Language = 'en', shown = 0) {
  const onPick = jest.fn();
  const onDrawBox = jest.fn();
  render(
    <I18nProvider initial={language}>
      <AutoFindingCard finding={finding} shown={shown} busy={null} error={null} onPick={onPick} onDrawBox={onDrawBox} />
    </I18nProvider>,
  );
  return { onPick, onDrawBox };
}

test('a drawn result is not automatic; an automatic one carries its finder, score, threshold and candidates', () => {
  expect(autoFinding(drawn)).toBeNull();
  const finding = autoFinding(automatic)!;
  expect(finding.mode).toBe('localiser');
  expect(finding.score).toBeCloseTo(0.873);
  expect(finding.threshold).toBeCloseTo(0.41);
  expect(finding.candidates).toHaveLength(3);
  // results stored before these fields read as automatic with nothing more to say
  expect(autoFinding({ ...drawn, prompt: 'auto' })).toEqual({ mode: null, candidates: [], score: null, threshold: null });
});

test('the automatic result says it was found automatically, with score vs threshold, in English and Spanish', () => {
  show({ ...autoFinding(automatic)!, model: { name: 'localiser-us', version: 'abc', sha256: '0123456789abcdef' } });
  expect(screen.getByTestId('auto-title')).toHaveTextContent('Found automatically');
  expect(screen.getByTestId('finder-model')).toHaveTextContent('Lesion finder localiser-us · version abc · sha256 0123456789ab');
  expect(screen.getByTestId('auto-found')).toHaveTextContent(/lesion score is 0\.87; it reports a lesion from 0\.41/);
  screen.unmount();
  show(autoFinding(automatic)!, 'es');
  expect(screen.getByTestId('auto-title')).toHaveTextContent('Encontrada automáticamente');
  expect(screen.getByTestId('auto-found')).toHaveTextContent(/puntuación de lesión es 0\.87; informa de una lesión desde 0\.41/);
});

test('candidates are numbered with accessible labels; picking one or drawing a box is one tap', () => {
  const { onPick, onDrawBox } = show(autoFinding(automatic)!);
  expect(screen.getByTestId('candidate-1').props.accessibilityLabel).toBe('Candidate 1, lesion score 0.87, shown');
  expect(screen.getByTestId('candidate-2').props.accessibilityLabel).toBe('Candidate 2, lesion score 0.52');
  expect(screen.getByTestId('candidate-3')).toHaveTextContent('3 · score 0.44');
  fireEvent.press(screen.getByTestId('candidate-2'));
  expect(onPick).toHaveBeenCalledWith(1);
  fireEvent.press(screen.getByTestId('draw-instead'));
  expect(onDrawBox).toHaveBeenCalled();
});

test('a picked candidate says so; the boxes are numbered in distinct colours, the shown one solid', () => {
  show(autoFinding(automatic)!, 'en', 1);
  expect(screen.getByTestId('auto-title')).toHaveTextContent('Candidate 2 of an automatic finding');
  expect(screen.getByTestId('auto-picked')).toHaveTextContent(/^You chose candidate 2 of BraNet's lesion finder \(lesion score 0\.52; it reports a lesion from 0\.41\)/);
  expect(screen.queryByTestId('auto-found')).toBeNull();
  const marks = candidateMarks(autoFinding(automatic)!, 1);
  expect(marks.map((m) => m.tag)).toEqual(['1', '2', '3']);
  expect(new Set(marks.map((m) => m.color)).size).toBe(3);
  expect(marks.map((m) => m.strong)).toEqual([false, true, false]);
});

test('the SAM generator fallback says so; a tap picks the smallest candidate box it falls in', () => {
  show({ mode: 'sam-amg', candidates: [], score: null, threshold: null });
  expect(screen.getByTestId('auto-found')).toHaveTextContent(/automatic mask generator/);
  const { candidates } = autoFinding(automatic)!;
  expect(candidateAt(candidates, 40, 40)).toBe(2);
  expect(candidateAt(candidates, 100, 80)).toBe(0);
  expect(candidateAt(candidates, 300, 300)).toBeNull();
  expect(servesFinder({ localisers: [{ modality: 'us' }] } as unknown as Models, 'us')).toBe(true);
  expect(servesFinder({ localisers: [{ modality: 'us' }] } as unknown as Models, 'dm')).toBe(false);
  expect(servesFinder({} as unknown as Models, 'us')).toBe(false);
  expect(candidateKey('abc123', 1)).toMatch(/^[A-Za-z0-9_-]{1,128}$/);
});

test('no lesion found is its own calm answer with the score it needed, never a generic error', async () => {
  const body = { error: { code: 'no_lesion_found', message: 'no lesion', score: 0.12, threshold: 0.41 } };
  const impl = (async () => new Response(JSON.stringify(body), { status: 422 })) as unknown as typeof fetch;
  const err = await new Client('http://srv', 'tok', impl).analyze('img', {}, 'key').catch((e: unknown) => e);
  expect(err).toBeInstanceOf(ApiError);
  expect((err as ApiError).kind).toBe('noLesion');
  expect(noLesionScore(err as ApiError)).toEqual({ score: 0.12, threshold: 0.41 });
  expect(errorMessage(translator('en'), err)).toBe(
    'No lesion found automatically — score 0.12, needs 0.41. If you see one, draw a box around it.');
  expect(errorMessage(translator('es'), err)).toMatch(/^No se encontró ninguna lesión automáticamente: puntuación 0\.12, necesita 0\.41/);
  // a score just under its threshold is not shown as equal to it
  const close = fromResponse(422, { error: { code: 'no_lesion_found', message: 'x', score: 0.9944, threshold: 0.995 } }, null);
  expect(errorMessage(translator('en'), close)).toMatch(/^No lesion found automatically — score 0\.994, needs 0\.995\./);
  // without a score (SAM's generator found nothing) it still says what to do
  expect(errorMessage(translator('en'), fromResponse(422, { error: { code: 'no_lesion_found', message: 'x' } }, null)))
    .toBe('No lesion found automatically. If you see one, draw a box around it.');
  // any other 422 is still the image's problem
  expect(fromResponse(422, { error: { code: 'invalid_image', message: 'x' } }, null).kind).toBe('invalidImage');
});
