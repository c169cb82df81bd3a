// apikeyd from Node.js (@grpc/grpc-js, types loaded from proto/ by
// @grpc/proto-loader): create a key with a root key, validate it, handle a
// refusal, check a rate limit.
//
//   npm ci --prefix examples/node
//   APIKEYD_ADDR=localhost:50051 APIKEYD_ROOT_KEY=rk_... node examples/node/client.js
//
// It checks every answer and exits non-zero on a surprise, so it doubles as a test.
'use strict';

const path = require('node:path');
const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const protoDir = path.join(__dirname, '..', '..', 'proto');
const definition = protoLoader.loadSync(
  ['key_service.proto', 'validation_service.proto', 'rate_limit_service.proto'].map((f) => `apikeyd/v1/${f}`),
  { includeDirs: [protoDir], keepCase: true, enums: String, defaults: true },
);
const { apikeyd } = grpc.loadPackageDefinition(definition);

function expect(condition, what) {
  if (!condition) {
    console.error(`node client: FAILED: ${what}`);
    process.exit(1);
  }
  console.log(`node client: ok: ${what}`);
}

// Promise-returning unary call with a 10 s deadline.
function call(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + 10_000 }, (error, response) =>
      error ? reject(error) : resolve(response));
  });
}

async function main() {
  const address = process.env.APIKEYD_ADDR || 'localhost:50051';
  const credentials = grpc.credentials.createInsecure();
  const keys = new apikeyd.v1.KeyService(address, credentials);
  const validation = new apikeyd.v1.ValidationService(address, credentials);
  const limits = new apikeyd.v1.RateLimitService(address, credentials);
  const root = new grpc.Metadata();
  root.set('authorization', `Bearer ${process.env.APIKEYD_ROOT_KEY}`);
  const owner = `node-${crypto.randomBytes(4).toString('hex')}`;

  // Create a key with the root key: the full key is in this answer only.
  const created = await call(keys, 'CreateKey', { owner_id: owner, name: 'Node example', scopes: ['posts:read'] }, root);
  expect(created.key.startsWith('sk_live_'), 'CreateKey returns the full key');

  // Validate it for a scope it has.
  const answer = await call(validation, 'Validate', { key: created.key, required_scopes: ['posts:read'] });
  expect(answer.valid && answer.api_key.owner_id === owner, 'Validate says the key is good');

  // A refusal is an answer, not an error: branch on `code`.
  const refused = await call(validation, 'Validate', { key: created.key, required_scopes: ['posts:write'] });
  expect(!refused.valid && refused.code === 'VALIDATION_CODE_INSUFFICIENT_SCOPE', `a missing scope is refused (${refused.message})`);

  // A bad request is a gRPC error with a status code.
  const error = await call(keys, 'CreateKey', { owner_id: owner, name: '', scopes: ['posts:read'] }, root).then(() => null, (e) => e);
  expect(error && error.code === grpc.status.INVALID_ARGUMENT, `an empty name is INVALID_ARGUMENT (${error && error.details})`);
  const anonymous = await call(keys, 'CreateKey', { owner_id: owner, name: 'x', scopes: ['a:b'] }).then(() => null, (e) => e);
  expect(anonymous && anonymous.code === grpc.status.UNAUTHENTICATED, 'CreateKey without a root key is UNAUTHENTICATED');

  // Rate-limit anything else: 2 per minute for this identifier.
  const check = {
    namespace: 'node-example', identifier: owner, limit: 2,
    window: { seconds: 60, nanos: 0 }, algorithm: 'RATE_LIMIT_ALGORITHM_FIXED_WINDOW',
  };
  const answers = [];
  for (let i = 0; i < 3; i += 1) answers.push(await call(limits, 'CheckRateLimit', check));
  expect(answers.map((a) => a.allowed).join() === 'true,true,false', 'CheckRateLimit admits 2 of 3');
  const wait = answers[2].retry_after;
  expect(Number(wait.seconds) > 0 || wait.nanos > 0, 'the refusal says when to retry');

  for (const client of [keys, validation, limits]) client.close();
}

main().catch((error) => {
  console.error(`node client: FAILED: ${error.stack || error}`);
  process.exit(1);
});
