// Binary masks as the app handles them: SAM's answer (COCO RLE) and the user's brush, drawn as an
// RGBA overlay (tinted fill + solid outline), downscaled so a re-prompt redraws in milliseconds.
import { encodePng, pngDataUri } from './png';

export interface Mask {
  width: number;
  height: number;
  data: Uint8Array; // row-major, 1 = lesion
}

/** COCO uncompressed RLE (column-major, starting with background) to a row-major mask. */
export function maskFromRle(size: [number, number] | number[], counts: number[]): Mask {
  const [height, width] = size as [number, number];
  const data = new Uint8Array(width * height);
  let pos = 0;
  counts.forEach((count, i) => {
    if (i % 2 === 1) {
      for (let k = pos; k < pos + count; k++) {
        const x = Math.floor(k / height);
        const y = k - x * height;
        data[y * width + x] = 1;
      }
    }
    pos += count;
  });
  if (pos !== width * height) throw new Error(`RLE covers ${pos} pixels, expected ${width * height}`);
  return { width, height, data };
}

export function emptyMask(width: number, height: number): Mask {
  return { width, height, data: new Uint8Array(width * height) };
}

export function maskArea(mask: Mask): number {
  let n = 0;
  for (const v of mask.data) n += v;
  return n;
}

/** The smallest box [x0, y0, x1, y1) holding the mask, or null when it is empty. */
export function maskBox(mask: Mask): [number, number, number, number] | null {
  let x0 = mask.width;
  let y0 = mask.height;
  let x1 = -1;
  let y1 = -1;
  for (let y = 0; y < mask.height; y++) {
    for (let x = 0; x < mask.width; x++) {
      if (mask.data[y * mask.width + x]) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  return x1 < 0 ? null : [x0, y0, x1 + 1, y1 + 1];
}

/** A grayscale PNG (255 = lesion) of the mask at full size: the server's `{"mask": ...}` prompt. */
export function maskPng(mask: Mask): Uint8Array {
  const pixels = new Uint8Array(mask.data.length);
  for (let i = 0; i < pixels.length; i++) pixels[i] = mask.data[i] ? 255 : 0;
  return encodePng(mask.width, mask.height, pixels, 'gray');
}

export type Rgb = [number, number, number];

/** Data URI of an RGBA overlay: the mask filled with `color` at low opacity and outlined solidly.
 * Drawn at most `maxSide` pixels on its long side; the image view scales it back up. */
export function overlayUri(mask: Mask, color: Rgb, maxSide = 512): string {
  const step = Math.max(1, Math.ceil(Math.max(mask.width, mask.height) / maxSide));
  const w = Math.ceil(mask.width / step);
  const h = Math.ceil(mask.height / step);
  const small = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) small[y * w + x] = mask.data[y * step * mask.width + x * step] ?? 0;
  }
  const rgba = new Uint8Array(w * h * 4);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!small[y * w + x]) continue;
      const edge =
        x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
        !small[y * w + x - 1] || !small[y * w + x + 1] || !small[(y - 1) * w + x] || !small[(y + 1) * w + x];
      const o = (y * w + x) * 4;
      rgba[o] = color[0];
      rgba[o + 1] = color[1];
      rgba[o + 2] = color[2];
      rgba[o + 3] = edge ? 255 : 70;
    }
  }
  return pngDataUri(encodePng(w, h, rgba, 'rgba'));
}

/** Paint a filled disc (the brush) into the mask; `erase` clears instead. */
export function paintDisc(mask: Mask, cx: number, cy: number, radius: number, erase = false): void {
  const r2 = radius * radius;
  const value = erase ? 0 : 1;
  for (let y = Math.max(0, Math.floor(cy - radius)); y <= Math.min(mask.height - 1, Math.ceil(cy + radius)); y++) {
    for (let x = Math.max(0, Math.floor(cx - radius)); x <= Math.min(mask.width - 1, Math.ceil(cx + radius)); x++) {
      if ((x - cx) ** 2 + (y - cy) ** 2 <= r2) mask.data[y * mask.width + x] = value;
    }
  }
}
