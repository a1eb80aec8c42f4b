/* A stand-in for Windows' bcryptprimitives.dll under Wine 8, which lacks it: Rust's standard library
 * (1.78 and later) takes its random numbers from ProcessPrng there, so no Rust program for Windows
 * starts under Wine 8 without it. It forwards to RtlGenRandom (advapi32's SystemFunction036), which
 * Wine has. For the Windows test tier only: real Windows 10 / Server 2016 and later have the DLL. */
#include <windows.h>
#define SystemFunction036 NTAPI SystemFunction036
#include <ntsecapi.h>
#undef SystemFunction036

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x7fffffff ? 0x7fffffff : (ULONG)len;
        if (!RtlGenRandom(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
