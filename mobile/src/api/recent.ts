// The analyses this app itself just received: the result screen shows one at once instead of
// asking the server again for what it answered a moment ago.
import type { Analysis } from './client';

const recent = new Map<string, Analysis>();
const KEEP = 8;

export function remember(analysis: Analysis): void {
  recent.set(analysis.id, analysis);
  for (const id of recent.keys()) {
    if (recent.size <= KEEP) break;
    recent.delete(id);
  }
}

export function recall(id: string): Analysis | null {
  return recent.get(id) ?? null;
}

export function forget(id: string): void {
  recent.delete(id);
}
