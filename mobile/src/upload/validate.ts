// Checked before any byte leaves the phone, with the same rules (and messages) as the server's 413/415.
export const ACCEPTED_TYPES = ['image/png', 'image/jpeg'] as const;
export const DEFAULT_MAX_BYTES = 10 * 1024 * 1024;

export type UploadProblem =
  | { kind: 'tooLarge'; maxMb: number }
  | { kind: 'notAnImage' }
  | { kind: 'empty' };

/** The kind of image the first bytes say the file is, whatever its name claims. */
export function sniff(head: Uint8Array): 'image/png' | 'image/jpeg' | null {
  const png = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (png.every((b, i) => head[i] === b)) return 'image/png';
  if (head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff) return 'image/jpeg';
  return null;
}

export function checkUpload(
  file: { name: string; type: string; size: number },
  head: Uint8Array | null,
  maxBytes: number = DEFAULT_MAX_BYTES,
): UploadProblem | null {
  if (file.size === 0) return { kind: 'empty' };
  if (file.size > maxBytes) return { kind: 'tooLarge', maxMb: Math.round((maxBytes / 1024 / 1024) * 10) / 10 };
  const type = head ? sniff(head) : (ACCEPTED_TYPES as readonly string[]).includes(file.type) ? file.type : null;
  if (type === null) return { kind: 'notAnImage' };
  return null;
}
