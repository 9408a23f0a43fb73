// Automatic lesion finding (issue 24): what an automatic result carries, and the "no lesion found"
// answer. The server's `{}` prompt runs its lesion finder (a trained localiser, milliseconds) or,
// where none is served, SAM's automatic mask generator (minutes on a CPU).
import type { Analysis, Candidate, FinderModel, Models, Segmentation } from './client';
import type { ApiError } from './errors';

export type AutoMode = NonNullable<Segmentation['auto_mode']>;

export interface AutoFinding {
  mode: AutoMode | null;
  /** the lesion finder that placed the box (localiser mode; from the analysis' models) */
  model?: FinderModel | null;
  /** ranked best first; the outlined one is the first */
  candidates: Candidate[];
  score: number | null;
  threshold: number | null;
}

/** What an automatic result says about how it was found; null for a drawn prompt. */
export function autoFinding(segmentation: Segmentation): AutoFinding | null {
  if (segmentation.prompt !== 'auto') return null;
  const s = segmentation; // results stored before automatic finding have none of these fields
  return {
    mode: s.auto_mode ?? null,
    candidates: (s.candidates ?? []).filter((c) => Array.isArray(c.box) && c.box.length === 4),
    score: s.lesion_score ?? null,
    threshold: s.lesion_threshold ?? null,
  };
}

/** An automatic analysis' finding, with the lesion finder that answered; null for a drawn prompt. */
export function analysisFinding(analysis: Analysis): AutoFinding | null {
  const finding = autoFinding(analysis.segmentation);
  if (!finding) return null;
  const model = analysis.models.localiser ?? null;
  return { ...finding, model };
}

/** Whether the server serves a lesion finder (localiser) for this modality: `{}` then answers in
 * milliseconds; without one it runs SAM's automatic mask generator (minutes on a CPU). */
export function servesFinder(models: Models, modality: string): boolean {
  return (models.localisers ?? []).some((l) => l.modality === modality);
}

/** A score and the threshold it is compared with, as text: two decimals, more (up to four) when two
 * would show different numbers as the same ("score 0.99, needs 0.99" would read as a contradiction). */
export function scorePair(score: number, threshold: number): { score: string; threshold: string } {
  for (let digits = 2; digits < 4; digits++) {
    const pair = { score: score.toFixed(digits), threshold: threshold.toFixed(digits) };
    if (pair.score !== pair.threshold) return pair;
  }
  return { score: score.toFixed(4), threshold: threshold.toFixed(4) };
}

/** The prompt that lets the server find the lesion itself. */
export const AUTO_PROMPT = {} as const;

/** The finder's score and threshold of a 422 `no_lesion_found` answer (null when it gave none). */
export function noLesionScore(err: ApiError): { score: number | null; threshold: number | null } {
  const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
  return { score: num(err.details.score), threshold: num(err.details.threshold) };
}

/** The same candidate of the same automatic result always sends the same Idempotency-Key: tapping it
 * again shows the analysis it made the first time instead of storing a second one. */
export const candidateKey = (autoAnalysisId: string, index: number) => `${autoAnalysisId}-candidate-${index + 1}`;

/** Distinct box colours for candidates 1, 2, 3…: candidate 1 keeps the drawn box's yellow. */
export const CANDIDATE_COLORS = ['#f1c40f', '#00bcd4', '#e91e63', '#8bc34a', '#ff9800', '#9c27b0', '#ffffff', '#3f51b5'];
export const candidateColor = (index: number) => CANDIDATE_COLORS[index % CANDIDATE_COLORS.length]!;

/** The candidate a tap at (x, y) in image pixels falls in: the smallest box that holds it, or null. */
export function candidateAt(candidates: Candidate[], x: number, y: number): number | null {
  let best: number | null = null;
  let bestArea = Infinity;
  candidates.forEach((c, i) => {
    const [x0, y0, x1, y1] = c.box as [number, number, number, number];
    const area = (x1 - x0) * (y1 - y0);
    if (x >= x0 && x <= x1 && y >= y0 && y <= y1 && area < bestArea) {
      best = i;
      bestArea = area;
    }
  });
  return best;
}
