import { inflateSync } from 'zlib';

import { decodeBase64 } from '../src/image/base64';
import * as roi from '../src/roi/model';

const start = roi.emptyRoi(400, 300);

test('nothing drawn asks for the automatic mode', () => {
  expect(roi.toPrompt(start)).toEqual({});
});

test('a box is dragged in any direction, clamped to the image; a tiny drag is no box', () => {
  expect(roi.boxFromDrag(start, [250, 200], [100, 50])).toEqual([100, 50, 250, 200]);
  expect(roi.boxFromDrag(start, [-20, -5], [500, 400])).toEqual([0, 0, 400, 300]);
  expect(roi.boxFromDrag(start, [10, 10], [12, 12])).toBeNull();
});

test('the latest box is the prompt; undo brings the previous one back', () => {
  let r = roi.add(start, { kind: 'box', box: [10, 10, 100, 100] });
  r = roi.add(r, { kind: 'box', box: [20, 20, 80, 80] });
  expect(roi.toPrompt(r)).toEqual({ box: [20, 20, 80, 80] });
  r = roi.undo(r);
  expect(roi.toPrompt(r)).toEqual({ box: [10, 10, 100, 100] });
  expect(roi.toPrompt(roi.clear(r))).toEqual({});
});

test('points keep their label; a point outside the image is ignored', () => {
  let r = roi.add(start, { kind: 'point', x: 120.4, y: 80.6, lesion: true });
  r = roi.add(r, { kind: 'point', x: 10, y: 10, lesion: false });
  r = roi.add(r, { kind: 'point', x: 900, y: 10, lesion: true });
  expect(roi.toPrompt(r)).toEqual({ points: [[120, 81, 1], [10, 10, 0]] });
});

test('the latest kind wins: points after a box send points, undo goes back to the box', () => {
  let r = roi.add(start, { kind: 'box', box: [10, 10, 100, 100] });
  r = roi.add(r, { kind: 'point', x: 50, y: 50, lesion: true });
  expect(roi.toPrompt(r)).toEqual({ points: [[50, 50, 1]] });
  expect(roi.toPrompt(roi.undo(r))).toEqual({ box: [10, 10, 100, 100] });
});

test('brush strokes become a full-size gray PNG mask, gaps between samples filled', () => {
  const r = roi.add(start, { kind: 'stroke', points: [[100, 100], [200, 100]], radius: 6 });
  const prompt = roi.toPrompt(r) as { mask: string };
  const png = decodeBase64(prompt.mask);
  const view = Buffer.from(png);
  expect(view.readUInt32BE(16)).toBe(400);
  expect(view.readUInt32BE(20)).toBe(300);
  const idat = view.subarray(41, 41 + view.readUInt32BE(33));
  const raw = inflateSync(idat);
  const at = (x: number, y: number) => raw[y * 401 + 1 + x];
  for (const x of [100, 130, 150, 170, 200]) expect(at(x, 100)).toBe(255);
  expect(at(100, 120)).toBe(0);
  expect(at(300, 100)).toBe(0);
});

test('a box far larger than the outline is flagged as loose', () => {
  expect(roi.boxLooseness([0, 0, 200, 200], [50, 50, 150, 150])).toBeCloseTo(4);
  expect(roi.boxLooseness([48, 48, 152, 152], [50, 50, 150, 150])).toBeLessThan(roi.LOOSE_BOX);
});
