// The client's requests and error mapping, against a recorded network (fetch is the platform's, not ours).
import { Client, requestKey } from '../src/api/client';
import { ApiError } from '../src/api/errors';

type Call = { url: string; init: RequestInit };

function network(answers: (Response | Error)[]) {
  const calls: Call[] = [];
  const impl = (async (url: string, init: RequestInit) => {
    calls.push({ url, init });
    const next = answers.shift();
    if (!next) throw new Error('no answer left');
    if (next instanceof Error) throw next;
    return next;
  }) as unknown as typeof fetch;
  return { calls, impl };
}

const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json', ...headers } });

test('sign-in posts the name and password as JSON, without a token', async () => {
  const net = network([json(201, { token: 'bns_x', expires_at: '2026-12-01T20:00:00Z', user: { name: 'ana', role: 'clinician' } })]);
  const session = await new Client('http://srv:8000/', null, net.impl).signIn('ana', 'secret-pw');
  expect(session.token).toBe('bns_x');
  const call = net.calls[0]!;
  expect(call.url).toBe('http://srv:8000/v1/auth/sessions');
  expect(call.init.method).toBe('POST');
  expect(JSON.parse(String(call.init.body))).toEqual({ username: 'ana', password: 'secret-pw' });
  expect((call.init.headers as Record<string, string>).Authorization).toBeUndefined();
});

test('every other call carries the bearer token; history pages through the cursor', async () => {
  const net = network([json(200, { items: [], next_cursor: null, notice: 'n' })]);
  await new Client('http://srv', 'bns_t', net.impl).history('1234', 20);
  expect(net.calls[0]!.url).toBe('http://srv/v1/analyses?limit=20&cursor=1234');
  expect((net.calls[0]!.init.headers as Record<string, string>).Authorization).toBe('Bearer bns_t');
});

test('an analysis request names the image, the prompt and an idempotency key reused on retry', async () => {
  const net = network([new TypeError('Network request failed'), json(201, { id: 'a1' })]);
  const client = new Client('http://srv', 'bns_t', net.impl);
  const key = requestKey();
  await expect(client.analyze('img', { box: [1, 2, 30, 40] }, key)).rejects.toMatchObject({ kind: 'network' });
  await client.analyze('img', { box: [1, 2, 30, 40] }, key);
  const [first, second] = net.calls;
  expect(JSON.parse(String(first!.init.body))).toEqual({ image_id: 'img', prompt: { box: [1, 2, 30, 40] } });
  const keyOf = (c: Call) => (c.init.headers as Record<string, string>)['Idempotency-Key'];
  expect(keyOf(first!)).toBe(key);
  expect(keyOf(second!)).toBe(key);
  expect(requestKey()).not.toBe(key);
  expect(key).toMatch(/^[0-9a-f]{32}$/);
});

test.each([
  [401, { error: { code: 'invalid_credentials', message: 'wrong user name or password' } }, {}, 'signInFailed', null],
  [429, { error: { code: 'too_many_attempts', message: 'later' } }, { 'Retry-After': '120' }, 'tooManyAttempts', 120],
  [401, { error: { code: 'unauthorized', message: 'session expired' } }, {}, 'sessionExpired', null],
  [413, { error: { code: 'too_large', message: 'big' } }, {}, 'tooLarge', null],
  [415, { error: { code: 'unsupported_media_type', message: 'gif' } }, {}, 'notAnImage', null],
  [422, { error: { code: 'corrupt_image', message: 'cannot decode' } }, {}, 'invalidImage', null],
  [503, { error: { code: 'busy', message: 'queue full' } }, { 'Retry-After': '2' }, 'busy', 2],
  [507, { error: { code: 'insufficient_storage', message: 'disk full' } }, { 'Retry-After': '60' }, 'diskFull', 60],
  [500, null, {}, 'server', null],
])('HTTP %i maps to a kind the screens translate', async (status, body, headers, kind, retryAfter) => {
  const net = network([json(status, body, headers)]);
  const err = await new Client('http://srv', 't', net.impl).me().catch((e: unknown) => e);
  expect(err).toBeInstanceOf(ApiError);
  expect(err).toMatchObject({ kind, status, retryAfter });
});

test('readiness is false when nothing answers or models are not loaded', async () => {
  expect(await new Client('http://x', null, network([new TypeError('offline')]).impl).ready()).toBe(false);
  expect(await new Client('http://x', null, network([json(503, { ready: false })]).impl).ready()).toBe(false);
  expect(await new Client('http://x', null, network([json(200, { ready: true })]).impl).ready()).toBe(true);
});
