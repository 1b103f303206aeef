/** Runs `fn` with the environment variable `name` set to `value` (undefined: unset), then restores it as it was. */
export async function withEnv<T>(name: string, value: string | undefined, fn: () => T | Promise<T>): Promise<T> {
  const before = process.env[name];
  const put = (v: string | undefined) => {
    if (v === undefined) delete process.env[name];
    else process.env[name] = v;
  };
  put(value);
  try {
    return await fn();
  } finally {
    put(before);
  }
}
