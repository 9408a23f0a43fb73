// The user's region of interest as a list of actions (box, points, brush strokes) with undo. The
// server takes one prompt kind at a time: the latest action's kind decides which one is sent.
import { emptyMask, maskBox, maskPng, paintDisc, type Mask } from '../image/mask';
import { encodeBase64 } from '../image/base64';

export type Box = [number, number, number, number];
export type Tool = 'box' | 'lesion' | 'background' | 'brush' | 'pan';

export type RoiAction =
  | { kind: 'box'; box: Box }
  | { kind: 'point'; x: number; y: number; lesion: boolean }
  | { kind: 'stroke'; points: [number, number][]; radius: number };

export interface Roi {
  width: number;
  height: number;
  actions: RoiAction[];
}

export type Prompt =
  | { box: number[] }
  | { points: number[][] }
  | { mask: string }
  | Record<string, never>;

export const emptyRoi = (width: number, height: number): Roi => ({ width, height, actions: [] });

const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));

/** A box from two corners dragged in any direction, clamped to the image; null when too small to mean anything. */
export function boxFromDrag(roi: Roi, a: [number, number], b: [number, number]): Box | null {
  const x0 = Math.round(clamp(Math.min(a[0], b[0]), 0, roi.width));
  const y0 = Math.round(clamp(Math.min(a[1], b[1]), 0, roi.height));
  const x1 = Math.round(clamp(Math.max(a[0], b[0]), 0, roi.width));
  const y1 = Math.round(clamp(Math.max(a[1], b[1]), 0, roi.height));
  return x1 - x0 >= 4 && y1 - y0 >= 4 ? [x0, y0, x1, y1] : null;
}

export function add(roi: Roi, action: RoiAction): Roi {
  if (action.kind === 'point' && (action.x < 0 || action.y < 0 || action.x >= roi.width || action.y >= roi.height)) {
    return roi;
  }
  return { ...roi, actions: [...roi.actions, action] };
}

export const undo = (roi: Roi): Roi => ({ ...roi, actions: roi.actions.slice(0, -1) });
export const clear = (roi: Roi): Roi => ({ ...roi, actions: [] });

export function currentKind(roi: Roi): RoiAction['kind'] | null {
  return roi.actions[roi.actions.length - 1]?.kind ?? null;
}

export function currentBox(roi: Roi): Box | null {
  if (currentKind(roi) !== 'box') return null;
  const last = roi.actions[roi.actions.length - 1];
  return last?.kind === 'box' ? last.box : null;
}

export function currentPoints(roi: Roi): { x: number; y: number; lesion: boolean }[] {
  if (currentKind(roi) !== 'point') return [];
  return roi.actions.flatMap((a) => (a.kind === 'point' ? [{ x: a.x, y: a.y, lesion: a.lesion }] : []));
}

/** The brush strokes painted into a mask of the image's size (null unless the brush is current). */
export function brushMask(roi: Roi): Mask | null {
  if (currentKind(roi) !== 'stroke') return null;
  const mask = emptyMask(roi.width, roi.height);
  for (const action of roi.actions) {
    if (action.kind !== 'stroke') continue;
    let prev: [number, number] | null = null;
    for (const p of action.points) {
      // fill the gap between two touch samples so a fast stroke stays continuous
      const steps = prev ? Math.max(1, Math.ceil(Math.hypot(p[0] - prev[0], p[1] - prev[1]) / (action.radius / 2))) : 1;
      for (let s = 1; s <= steps; s++) {
        const t = s / steps;
        const x = prev ? prev[0] + (p[0] - prev[0]) * t : p[0];
        const y = prev ? prev[1] + (p[1] - prev[1]) * t : p[1];
        paintDisc(mask, x, y, action.radius);
      }
      prev = p;
    }
  }
  return mask;
}

/** The server prompt for the current ROI; `{}` (automatic) when nothing is drawn. */
export function toPrompt(roi: Roi): Prompt {
  switch (currentKind(roi)) {
    case 'box':
      return { box: [...currentBox(roi)!] };
    case 'point':
      return { points: currentPoints(roi).map((p) => [Math.round(p.x), Math.round(p.y), p.lesion ? 1 : 0]) };
    case 'stroke': {
      const mask = brushMask(roi)!;
      return maskBox(mask) ? { mask: encodeBase64(maskPng(mask)) } : {};
    }
    default:
      return {};
  }
}

/** How many times larger the drawn box is than the box of SAM's outline (1 = tight). */
export function boxLooseness(drawn: Box, outline: number[]): number {
  const area = (b: number[]) => Math.max(1, (b[2]! - b[0]!) * (b[3]! - b[1]!));
  return area(drawn) / area(outline);
}

/** The served model was trained on SAM masks from tight boxes: beyond this the user is told so. */
export const LOOSE_BOX = 1.5;
